//! The Wan VAE's encoder and decoder (`WanEncoder3d`, `WanDecoder3d`).

use burn::{
    module::Module,
    tensor::{activation::silu, backend::Backend, Tensor},
};

use super::{
    layers::{
        ChannelRmsNorm, FeatCache, ResampleMode, WanCausalConv3d, WanMidBlock, WanResBlock,
        WanResample,
    },
    WanVaeConfig,
};

/// One layer of the encoder's down path (`down_blocks.{i}`).
#[derive(Module, Debug)]
pub enum DownLayer<B: Backend> {
    /// A residual block.
    Res(WanResBlock<B>),
    /// A downsampling layer.
    Resample(WanResample<B>),
}

/// The encoder: video `[B, 3, F, H, W]` -> `[B, 2 z_dim, F', H / 8, W / 8]` (mean and
/// log-variance, before `quant_conv`).
#[derive(Module, Debug)]
pub struct WanEncoder<B: Backend> {
    /// `conv_in`.
    pub conv_in: WanCausalConv3d<B>,
    /// `down_blocks`.
    pub down: Vec<DownLayer<B>>,
    /// `mid_block`.
    pub mid: WanMidBlock<B>,
    /// `norm_out`.
    pub norm_out: ChannelRmsNorm<B>,
    /// `conv_out`.
    pub conv_out: WanCausalConv3d<B>,
}

impl<B: Backend> WanEncoder<B> {
    pub(crate) fn new(cfg: &WanVaeConfig, device: &B::Device) -> Self {
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| m * cfg.base_dim)
            .collect();
        let mut down = Vec::new();
        for (i, pair) in dims.windows(2).enumerate() {
            let (mut c_in, c_out) = (pair[0], pair[1]);
            for _ in 0..cfg.num_res_blocks {
                down.push(DownLayer::Res(WanResBlock::new(c_in, c_out, device)));
                c_in = c_out;
            }
            if i + 1 != cfg.dim_mult.len() {
                let mode = if cfg.temperal_downsample[i] {
                    ResampleMode::Down3d
                } else {
                    ResampleMode::Down2d
                };
                down.push(DownLayer::Resample(WanResample::new(c_out, mode, device)));
            }
        }
        let c = *dims.last().expect("dim_mult is not empty");
        Self {
            conv_in: WanCausalConv3d::cube(cfg.in_channels, dims[0], 3, device),
            down,
            mid: WanMidBlock::new(c, device),
            norm_out: ChannelRmsNorm::new(c, device),
            conv_out: WanCausalConv3d::cube(c, 2 * cfg.z_dim, 3, device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let mut x = self.conv_in.cached(x, cache);
        for layer in &self.down {
            x = match layer {
                DownLayer::Res(block) => block.forward(x, cache),
                DownLayer::Resample(resample) => resample.forward(x, cache),
            };
        }
        let x = self.mid.forward(x, cache);
        self.conv_out.cached(silu(self.norm_out.forward(x)), cache)
    }
}

/// One up block of the decoder (`up_blocks.{i}`): residual blocks, then an optional upsampler.
#[derive(Module, Debug)]
pub struct WanUpBlock<B: Backend> {
    /// `resnets`.
    pub resnets: Vec<WanResBlock<B>>,
    /// `upsamplers.0`.
    pub upsampler: Option<WanResample<B>>,
}

/// The decoder: latent `[B, z_dim, F', H', W']` (after `post_quant_conv`) -> video
/// `[B, 3, F, 8 H', 8 W']`.
#[derive(Module, Debug)]
pub struct WanDecoder<B: Backend> {
    /// `conv_in`.
    pub conv_in: WanCausalConv3d<B>,
    /// `mid_block`.
    pub mid: WanMidBlock<B>,
    /// `up_blocks`.
    pub up: Vec<WanUpBlock<B>>,
    /// `norm_out`.
    pub norm_out: ChannelRmsNorm<B>,
    /// `conv_out`.
    pub conv_out: WanCausalConv3d<B>,
}

impl<B: Backend> WanDecoder<B> {
    pub(crate) fn new(cfg: &WanVaeConfig, device: &B::Device) -> Self {
        let base = cfg.decoder_base_dim.unwrap_or(cfg.base_dim);
        let mult = &cfg.dim_mult;
        let dims: Vec<usize> = std::iter::once(*mult.last().expect("dim_mult is not empty"))
            .chain(mult.iter().rev().copied())
            .map(|m| m * base)
            .collect();
        let n = mult.len();
        let mut up = Vec::new();
        for (i, pair) in dims.windows(2).enumerate() {
            // the previous block's upsampler halved the width
            let c_in = if i > 0 { pair[0] / 2 } else { pair[0] };
            let c_out = pair[1];
            let resnets = (0..=cfg.num_res_blocks)
                .map(|j| WanResBlock::new(if j == 0 { c_in } else { c_out }, c_out, device))
                .collect();
            let temporal = cfg.temperal_downsample[n - 2 - i.min(n - 2)];
            let upsampler = (i + 1 != n).then(|| {
                let mode = if temporal {
                    ResampleMode::Up3d
                } else {
                    ResampleMode::Up2d
                };
                WanResample::new(c_out, mode, device)
            });
            up.push(WanUpBlock { resnets, upsampler });
        }
        let c = *dims.last().expect("dims");
        Self {
            conv_in: WanCausalConv3d::cube(cfg.z_dim, dims[0], 3, device),
            mid: WanMidBlock::new(dims[0], device),
            up,
            norm_out: ChannelRmsNorm::new(c, device),
            conv_out: WanCausalConv3d::cube(c, cfg.out_channels, 3, device),
        }
    }
}
