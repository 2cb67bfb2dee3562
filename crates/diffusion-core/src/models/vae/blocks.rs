use burn::{
    module::Module,
    module::Param,
    nn::{
        conv::{Conv3d, Conv3dConfig},
        PaddingConfig3d,
    },
    tensor::{activation::silu, backend::Backend, Tensor},
};

/// A 3D convolution that is causal in time: `k_t - 1` zero frames are prepended, so output
/// frame `f` sees input frames `<= f` only (Wan-VAE's `CausalConv3d`). Spatial padding keeps
/// the size at stride 1.
///
/// # Shapes
/// - `[B, C_in, F, H, W]` -> `[B, C_out, F, H / s, W / s]`
#[derive(Module, Debug)]
pub struct CausalConv3d<B: Backend> {
    /// The convolution (no temporal padding of its own).
    pub conv: Conv3d<B>,
    pad_t: usize,
}

impl<B: Backend> CausalConv3d<B> {
    /// Kernel `[k_t, k, k]`, spatial stride `stride`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        k_t: usize,
        k: usize,
        stride: usize,
        device: &B::Device,
    ) -> Self {
        let conv = Conv3dConfig::new([c_in, c_out], [k_t, k, k])
            .with_stride([1, stride, stride])
            .with_padding(PaddingConfig3d::Explicit(0, k / 2, k / 2))
            .init(device);
        Self {
            conv,
            pad_t: k_t - 1,
        }
    }

    /// # Shapes
    /// - `x`: `[B, C_in, F, H, W]` -> `[B, C_out, F, H', W']`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        if self.pad_t == 0 {
            return self.conv.forward(x);
        }
        let [b, c, _, h, w] = x.dims();
        let pad = Tensor::zeros([b, c, self.pad_t, h, w], &x.device());
        self.conv.forward(Tensor::cat(vec![pad, x], 2))
    }
}

/// GroupNorm applied to every frame on its own (statistics over the channels of a group, height
/// and width), so normalisation never mixes frames and the network stays causal in time.
/// Computed in place on `[B, G, C/G, F, H*W]` views, without transposes.
///
/// # Shapes
/// - `x`: `[B, C, F, H, W]` -> same
#[derive(Module, Debug)]
pub struct FrameGroupNorm<B: Backend> {
    /// Per-channel scale.
    pub gamma: Param<Tensor<B, 1>>,
    /// Per-channel shift.
    pub beta: Param<Tensor<B, 1>>,
    groups: usize,
    eps: f64,
}

impl<B: Backend> FrameGroupNorm<B> {
    /// `groups` is reduced to the largest divisor of `channels` not above it.
    pub fn new(groups: usize, channels: usize, device: &B::Device) -> Self {
        let groups = (1..=groups.min(channels))
            .rev()
            .find(|g| channels % g == 0)
            .unwrap_or(1);
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            groups,
            eps: 1e-5,
        }
    }

    /// See the type docs.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, f, h, w] = x.dims();
        let g = self.groups;
        let v: Tensor<B, 5> = x.reshape([b, g, c / g, f, h * w]);
        let n = ((c / g) * h * w) as f64;
        let mean = v.clone().sum_dim(4).sum_dim(2).div_scalar(n);
        let centered = v - mean;
        let var = centered
            .clone()
            .powi_scalar(2)
            .sum_dim(4)
            .sum_dim(2)
            .div_scalar(n);
        let normed: Tensor<B, 5> =
            (centered / var.add_scalar(self.eps).sqrt()).reshape([b, c, f, h, w]);
        let gamma: Tensor<B, 5> = self.gamma.val().reshape([1, c, 1, 1, 1]);
        let beta: Tensor<B, 5> = self.beta.val().reshape([1, c, 1, 1, 1]);
        normed * gamma + beta
    }
}

/// Residual block: `x + conv(silu(gn(conv(silu(gn(x))))))` with per-frame GroupNorm, with a 1x1x1 projection of the
/// shortcut when the width changes.
#[derive(Module, Debug)]
pub struct ResBlock3d<B: Backend> {
    norm1: FrameGroupNorm<B>,
    conv1: CausalConv3d<B>,
    norm2: FrameGroupNorm<B>,
    conv2: CausalConv3d<B>,
    shortcut: Option<CausalConv3d<B>>,
}

impl<B: Backend> ResBlock3d<B> {
    /// A block from `c_in` to `c_out` channels with `groups` GroupNorm groups.
    pub fn new(c_in: usize, c_out: usize, groups: usize, device: &B::Device) -> Self {
        Self {
            norm1: FrameGroupNorm::new(groups, c_in, device),
            conv1: CausalConv3d::new(c_in, c_out, 3, 3, 1, device),
            norm2: FrameGroupNorm::new(groups, c_out, device),
            conv2: CausalConv3d::new(c_out, c_out, 3, 3, 1, device),
            shortcut: (c_in != c_out).then(|| CausalConv3d::new(c_in, c_out, 1, 1, 1, device)),
        }
    }

    /// # Shapes
    /// - `[B, C_in, F, H, W]` -> `[B, C_out, F, H, W]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let skip = match &self.shortcut {
            Some(s) => s.forward(x),
            None => x,
        };
        skip + h
    }
}

/// Halves the frame count in the `1 + 2m` layout: frame 0 is kept on its own (mixed with
/// itself), every later pair of frames is mixed into one by a learned channel map.
///
/// # Shapes
/// - `[B, C, 1 + 2m, H, W]` -> `[B, C, 1 + m, H, W]`
#[derive(Module, Debug)]
pub struct TemporalDown<B: Backend> {
    mix: CausalConv3d<B>,
}

impl<B: Backend> TemporalDown<B> {
    /// For `c` channels.
    pub fn new(c: usize, device: &B::Device) -> Self {
        Self {
            mix: CausalConv3d::new(2 * c, c, 1, 1, 1, device),
        }
    }

    /// See the type docs.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, f, h, w] = x.dims();
        let m = (f - 1) / 2;
        let first = x.clone().narrow(2, 0, 1);
        let first = Tensor::cat(vec![first.clone(), first], 1);
        if m == 0 {
            // a single frame (an image) stays one frame
            return self.mix.forward(first);
        }
        // [B, C, 2m, H, W] -> [B, C, m, 2, H, W] -> [B, 2C, m, H, W] with (pair-member, channel) order
        let rest: Tensor<B, 6> = x.narrow(2, 1, 2 * m).reshape([b, c, m, 2, h, w]);
        let rest = rest
            .permute([0, 3, 1, 2, 4, 5])
            .reshape([b, 2 * c, m, h, w]);
        self.mix.forward(Tensor::cat(vec![first, rest], 2))
    }
}

/// Doubles the frame count in the `1 + m` layout: frame 0 maps to one frame, every later frame
/// to two (the inverse layout of [`TemporalDown`]).
///
/// # Shapes
/// - `[B, C, 1 + m, H, W]` -> `[B, C, 1 + 2m, H, W]`
#[derive(Module, Debug)]
pub struct TemporalUp<B: Backend> {
    split: CausalConv3d<B>,
}

impl<B: Backend> TemporalUp<B> {
    /// For `c` channels.
    pub fn new(c: usize, device: &B::Device) -> Self {
        Self {
            split: CausalConv3d::new(c, 2 * c, 1, 1, 1, device),
        }
    }

    /// See the type docs.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, f, h, w] = x.dims();
        let m = f - 1;
        let y = self.split.forward(x);
        let first = y.clone().narrow(2, 0, 1).narrow(1, 0, c);
        if m == 0 {
            return first;
        }
        // [B, 2C, m, H, W] -> [B, 2, C, m, H, W] -> [B, C, m, 2, H, W] -> [B, C, 2m, H, W]
        let rest: Tensor<B, 6> = y.narrow(2, 1, m).reshape([b, 2, c, m, h, w]);
        let rest = rest
            .permute([0, 2, 3, 1, 4, 5])
            .reshape([b, c, 2 * m, h, w]);
        Tensor::cat(vec![first, rest], 2)
    }
}
