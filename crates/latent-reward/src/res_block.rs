//! The residual 3D-convolution block of the VELR latent reward model.

use burn::{
    config::Config,
    module::Module,
    nn::{
        conv::{Conv3d, Conv3dConfig},
        GroupNorm, GroupNormConfig, PaddingConfig3d,
    },
    tensor::{activation, backend::Backend, Tensor},
};

/// Configuration of a [`ResBlock`].
#[derive(Config, Debug)]
pub struct ResBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Stride `(F, H, W)` of the first convolution and the skip map (the downsampling).
    pub stride: [usize; 3],
    /// GroupNorm groups (must divide `out_channels`).
    pub groups: usize,
}

impl ResBlockConfig {
    /// A randomly initialised block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResBlock<B> {
        let conv = |cin, k: usize, stride| {
            let pad = k / 2;
            Conv3dConfig::new([cin, self.out_channels], [k, k, k])
                .with_stride(stride)
                .with_padding(PaddingConfig3d::Explicit(pad, pad, pad))
                .init(device)
        };
        ResBlock {
            conv1: conv(self.in_channels, 3, self.stride),
            norm1: GroupNormConfig::new(self.groups, self.out_channels).init(device),
            conv2: conv(self.out_channels, 3, [1, 1, 1]),
            norm2: GroupNormConfig::new(self.groups, self.out_channels).init(device),
            skip: conv(self.in_channels, 1, self.stride),
        }
    }
}

/// `SiLU(GN(conv(SiLU(GN(conv_s(x))))) + skip_s(x))`: two 3x3x3 convolutions with GroupNorm
/// and SiLU, the first strided, and a strided 1x1x1 convolution as the residual map
/// (VELR "VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models", section 4.1).
///
/// # Shapes
/// - `[B, C_in, F, H, W]` -> `[B, C_out, ceil(F/s_f), ceil(H/s_h), ceil(W/s_w)]`
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    /// First convolution (strided).
    pub conv1: Conv3d<B>,
    /// Its normalisation.
    pub norm1: GroupNorm<B>,
    /// Second convolution.
    pub conv2: Conv3d<B>,
    /// Its normalisation.
    pub norm2: GroupNorm<B>,
    /// Residual map (strided 1x1x1 convolution).
    pub skip: Conv3d<B>,
}

impl<B: Backend> ResBlock<B> {
    /// Applies the block.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let h = activation::silu(self.norm1.forward(self.conv1.forward(x.clone())));
        let h = self.norm2.forward(self.conv2.forward(h));
        activation::silu(h + self.skip.forward(x))
    }
}
