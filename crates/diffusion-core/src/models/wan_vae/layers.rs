//! The layers of the Wan VAE, each with the per-frame-chunk feature cache of diffusers'
//! `AutoencoderKLWan` (frames of a chunk see the last frames of the chunk before).

use burn::{
    module::{Module, Param},
    nn::conv::{Conv2d, Conv2dConfig, Conv3d, Conv3dConfig},
    nn::{PaddingConfig2d, PaddingConfig3d},
    tensor::{activation::silu, backend::Backend, Tensor},
};

use crate::ops::attention::attention;

/// Frames a cached convolution keeps from one chunk for the next (`CACHE_T`).
const CACHE_T: usize = 2;

/// What one cached layer remembers between chunks.
#[derive(Debug, Clone)]
pub(crate) enum Slot<B: Backend> {
    /// Nothing seen yet.
    Empty,
    /// The first chunk passed an upsampling layer without its temporal convolution.
    Rep,
    /// The last frames of the previous chunk's input.
    Frames(Tensor<B, 5>),
}

/// The feature cache of one encode or decode: one slot per cached layer, visited in order for
/// every chunk.
#[derive(Debug, Clone)]
pub(crate) struct FeatCache<B: Backend> {
    slots: Vec<Slot<B>>,
    idx: usize,
}

impl<B: Backend> FeatCache<B> {
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            idx: 0,
        }
    }

    /// A cache holding `slots`, at its first slot.
    pub(crate) fn from_slots(slots: Vec<Slot<B>>) -> Self {
        Self { slots, idx: 0 }
    }

    /// Starts the next chunk.
    pub(crate) fn rewind(&mut self) {
        self.idx = 0;
    }

    /// How many slots the current chunk has visited.
    pub(crate) fn position(&self) -> usize {
        self.idx
    }

    /// Slot `k`, if it has been visited.
    pub(crate) fn slot(&self, k: usize) -> Option<&Slot<B>> {
        self.slots.get(k)
    }

    /// Every slot.
    pub(crate) fn slots(&self) -> &[Slot<B>] {
        &self.slots
    }

    fn next(&mut self) -> &mut Slot<B> {
        if self.idx == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.idx += 1;
        &mut self.slots[self.idx - 1]
    }
}

fn frames<B: Backend>(x: &Tensor<B, 5>) -> usize {
    x.dims()[2]
}

/// The last `n` frames (all if fewer).
fn last_frames<B: Backend>(x: &Tensor<B, 5>, n: usize) -> Tensor<B, 5> {
    let f = frames(x);
    x.clone().narrow(2, f - n.min(f), n.min(f))
}

/// The last `n` frames of `x` (all if fewer) in a buffer of their own: a slice shares its
/// parent's buffer (flex, cubecl), so a cache keeping one would keep the chunk's whole input.
fn kept_frames<B: Backend>(x: &Tensor<B, 5>, n: usize) -> Tensor<B, 5> {
    if frames(x) <= n {
        x.clone()
    } else {
        last_frames(x, n).add_scalar(0.0)
    }
}

/// What a cached convolution stores after seeing `x`: its last two frames, completed by the
/// previous chunk's last frame when `x` has one frame only.
fn cache_of<B: Backend>(x: &Tensor<B, 5>, previous: &Slot<B>) -> Tensor<B, 5> {
    let cache = kept_frames(x, CACHE_T);
    match previous {
        Slot::Frames(prev) if frames(&cache) < CACHE_T => {
            Tensor::cat(vec![last_frames(prev, 1), cache], 2)
        }
        _ => cache,
    }
}

/// A 3D convolution, causal in time: `2 p_t` frames before the first are zeros or, between
/// chunks, the previous chunk's last frames (`WanCausalConv3d`).
///
/// # Shapes
/// - `[B, C_in, F, H, W]` -> `[B, C_out, (F + 2 p_t - k_t) / s_t + 1, H', W']`
#[derive(Module, Debug)]
pub struct WanCausalConv3d<B: Backend> {
    /// The convolution, without temporal padding.
    pub conv: Conv3d<B>,
    pad_t: usize,
}

impl<B: Backend> WanCausalConv3d<B> {
    /// Kernel `k`, stride `stride`, padding `padding` (`[t, h, w]`; time padded causally).
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
        device: &B::Device,
    ) -> Self {
        let conv = Conv3dConfig::new([c_in, c_out], k)
            .with_stride(stride)
            .with_padding(PaddingConfig3d::Explicit(0, padding[1], padding[2]))
            .init(device);
        Self {
            conv,
            pad_t: 2 * padding[0],
        }
    }

    /// A `k x k x k` convolution with "same" padding.
    pub fn cube(c_in: usize, c_out: usize, k: usize, device: &B::Device) -> Self {
        let p = k / 2;
        Self::new(c_in, c_out, [k; 3], [1; 3], [p; 3], device)
    }

    /// Convolves `x`, with `before` (frames of the previous chunk) in place of the first
    /// zero frames.
    pub fn forward(&self, x: Tensor<B, 5>, before: Option<&Tensor<B, 5>>) -> Tensor<B, 5> {
        let mut pad = self.pad_t;
        let mut x = x;
        if let Some(before) = before.filter(|_| self.pad_t > 0) {
            pad = pad.saturating_sub(frames(before));
            x = Tensor::cat(vec![before.clone(), x], 2);
        }
        if pad > 0 {
            let [b, c, _, h, w] = x.dims();
            let zeros = Tensor::zeros([b, c, pad, h, w], &x.device());
            x = Tensor::cat(vec![zeros, x], 2);
        }
        self.conv.forward(x)
    }

    /// [`WanCausalConv3d::forward`] with the feature cache.
    pub(crate) fn cached(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let slot = cache.next();
        let keep = cache_of(&x, slot);
        let before = match slot {
            Slot::Frames(t) => Some(t.clone()),
            _ => None,
        };
        let out = self.forward(x, before.as_ref());
        *slot = Slot::Frames(keep);
        out
    }
}

/// `x / ||x|| * sqrt(C) * gamma` over the channel axis (`WanRMS_norm`, no bias).
///
/// # Shapes
/// - `x`: `[B, C, ...]` -> same
#[derive(Module, Debug)]
pub struct ChannelRmsNorm<B: Backend> {
    /// Per-channel scale, `[C]`.
    pub gamma: Param<Tensor<B, 1>>,
}

impl<B: Backend> ChannelRmsNorm<B> {
    /// Scale one.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
        }
    }

    /// Normalises axis 1.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let c = x.dims()[1];
        // F.normalize: x / max(||x||, 1e-12)
        let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
        let mut shape = [1; D];
        shape[1] = c;
        let gamma = self
            .gamma
            .val()
            .mul_scalar((c as f64).sqrt())
            .reshape(shape);
        x / norm * gamma
    }
}

/// Residual block: RMS norm, SiLU, causal conv, twice, plus a (1x1x1-conv) shortcut
/// (`WanResidualBlock`).
///
/// # Shapes
/// - `[B, C_in, F, H, W]` -> `[B, C_out, F, H, W]`
#[derive(Module, Debug)]
pub struct WanResBlock<B: Backend> {
    /// First norm.
    pub norm1: ChannelRmsNorm<B>,
    /// First convolution.
    pub conv1: WanCausalConv3d<B>,
    /// Second norm.
    pub norm2: ChannelRmsNorm<B>,
    /// Second convolution.
    pub conv2: WanCausalConv3d<B>,
    /// Shortcut when the width changes.
    pub shortcut: Option<WanCausalConv3d<B>>,
}

impl<B: Backend> WanResBlock<B> {
    pub(crate) fn new(c_in: usize, c_out: usize, device: &B::Device) -> Self {
        Self {
            norm1: ChannelRmsNorm::new(c_in, device),
            conv1: WanCausalConv3d::cube(c_in, c_out, 3, device),
            norm2: ChannelRmsNorm::new(c_out, device),
            conv2: WanCausalConv3d::cube(c_out, c_out, 3, device),
            shortcut: (c_in != c_out).then(|| WanCausalConv3d::cube(c_in, c_out, 1, device)),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let h = match &self.shortcut {
            Some(conv) => conv.forward(x.clone(), None),
            None => x.clone(),
        };
        let x = self.conv1.cached(silu(self.norm1.forward(x)), cache);
        let x = self.conv2.cached(silu(self.norm2.forward(x)), cache);
        x + h
    }
}

/// Single-head self-attention over the pixels of each frame (`WanAttentionBlock`).
///
/// # Shapes
/// - `[B, C, F, H, W]` -> same
#[derive(Module, Debug)]
pub struct WanAttentionBlock<B: Backend> {
    /// Norm over channels.
    pub norm: ChannelRmsNorm<B>,
    /// 1x1 convolution to `3C` (q, k, v).
    pub to_qkv: Conv2d<B>,
    /// 1x1 output convolution.
    pub proj: Conv2d<B>,
}

impl<B: Backend> WanAttentionBlock<B> {
    pub(crate) fn new(c: usize, device: &B::Device) -> Self {
        Self {
            norm: ChannelRmsNorm::new(c, device),
            to_qkv: Conv2dConfig::new([c, 3 * c], [1, 1]).init(device),
            proj: Conv2dConfig::new([c, c], [1, 1]).init(device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, f, h, w] = x.dims();
        let frames = per_frame(x.clone());
        let qkv = self.to_qkv.forward(self.norm.forward(frames));
        // [BF, 3C, HW] -> [BF, HW, 1, 3C] (tokens, one head)
        let qkv = qkv.reshape([b * f, 3 * c, h * w]).swap_dims(1, 2);
        let qkv: Tensor<B, 4> = qkv.reshape([b * f, h * w, 1, 3 * c]);
        let part = |i: usize| qkv.clone().narrow(3, i * c, c);
        let out = attention(part(0), part(1), part(2));
        let out = out
            .reshape([b * f, h * w, c])
            .swap_dims(1, 2)
            .reshape([b * f, c, h, w]);
        from_frames(self.proj.forward(out), b, f) + x
    }
}

/// `[B, C, F, H, W]` -> `[B F, C, H, W]`.
pub(crate) fn per_frame<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 4> {
    let [b, c, f, h, w] = x.dims();
    x.swap_dims(1, 2).reshape([b * f, c, h, w])
}

/// `[B F, C, H, W]` -> `[B, C, F, H, W]`.
pub(crate) fn from_frames<B: Backend>(x: Tensor<B, 4>, b: usize, f: usize) -> Tensor<B, 5> {
    let [_, c, h, w] = x.dims();
    x.reshape([b, f, c, h, w]).swap_dims(1, 2)
}

/// How a [`WanResample`] changes the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleMode {
    /// Halves height and width.
    Down2d,
    /// Halves height, width and (after the first frame) time.
    Down3d,
    /// Doubles height and width, halving the channels.
    Up2d,
    /// Doubles height, width and (after the first frame) time, halving the channels.
    Up3d,
}

/// Spatial (and temporal) down- or upsampling (`WanResample`).
///
/// # Shapes
/// - down: `[B, C, F, H, W]` -> `[B, C, F', H / 2, W / 2]`
/// - up: `[B, C, F, H, W]` -> `[B, C / 2, F', 2 H, 2 W]`
#[derive(Module, Debug)]
pub struct WanResample<B: Backend> {
    /// The spatial convolution (`resample.1`).
    pub conv: Conv2d<B>,
    /// The temporal convolution of the 3D modes (`time_conv`).
    pub time_conv: Option<WanCausalConv3d<B>>,
    #[module(skip)]
    mode: ResampleMode,
}

impl<B: Backend> WanResample<B> {
    pub(crate) fn new(c: usize, mode: ResampleMode, device: &B::Device) -> Self {
        let (conv, time_conv) = match mode {
            ResampleMode::Down2d | ResampleMode::Down3d => (
                Conv2dConfig::new([c, c], [3, 3]).with_stride([2, 2]),
                (mode == ResampleMode::Down3d)
                    .then(|| WanCausalConv3d::new(c, c, [3, 1, 1], [2, 1, 1], [0; 3], device)),
            ),
            ResampleMode::Up2d | ResampleMode::Up3d => (
                Conv2dConfig::new([c, c / 2], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
                (mode == ResampleMode::Up3d)
                    .then(|| WanCausalConv3d::new(c, 2 * c, [3, 1, 1], [1; 3], [1, 0, 0], device)),
            ),
        };
        Self {
            conv: conv.init(device),
            time_conv,
            mode,
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let mut x = x;
        if let (ResampleMode::Up3d, Some(time_conv)) = (self.mode, &self.time_conv) {
            let slot = cache.next();
            match slot {
                // the first chunk passes without temporal upsampling
                Slot::Empty => *slot = Slot::Rep,
                _ => {
                    let mut keep = kept_frames(&x, CACHE_T);
                    if frames(&keep) < CACHE_T {
                        let first = match slot {
                            Slot::Frames(prev) => last_frames(prev, 1),
                            _ => keep.zeros_like(),
                        };
                        keep = Tensor::cat(vec![first, keep], 2);
                    }
                    let before = match slot {
                        Slot::Frames(t) => Some(t.clone()),
                        _ => None,
                    };
                    let y = time_conv.forward(x, before.as_ref());
                    *slot = Slot::Frames(keep);
                    // [B, 2C, F, H, W] -> frames interleaved: [B, C, 2F, H, W]
                    let [b, c2, f, h, w] = y.dims();
                    let y: Tensor<B, 6> = y.reshape([b, 2, c2 / 2, f, h, w]);
                    x = y
                        .permute([0, 2, 3, 1, 4, 5])
                        .reshape([b, c2 / 2, 2 * f, h, w]);
                }
            }
        }
        let [b, _, f, _, _] = x.dims();
        let frames_2d = per_frame(x);
        let y = match self.mode {
            ResampleMode::Down2d | ResampleMode::Down3d => {
                self.conv.forward(frames_2d.pad((0, 1, 0, 1), 0.0))
            }
            ResampleMode::Up2d | ResampleMode::Up3d => self.conv.forward(upsample2x(frames_2d)),
        };
        let mut x = from_frames(y, b, f);
        if let (ResampleMode::Down3d, Some(time_conv)) = (self.mode, &self.time_conv) {
            let slot = cache.next();
            match slot {
                Slot::Frames(prev) => {
                    let keep = kept_frames(&x, 1);
                    let joined = Tensor::cat(vec![last_frames(prev, 1), x], 2);
                    x = time_conv.forward(joined, None);
                    *slot = Slot::Frames(keep);
                }
                // the first chunk passes without temporal downsampling
                _ => *slot = Slot::Frames(x.clone()),
            }
        }
        x
    }
}

/// Nearest-neighbour 2x upsampling (`nearest-exact` at scale 2).
///
/// # Shapes
/// - `[N, C, H, W]` -> `[N, C, 2H, 2W]`
fn upsample2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let x: Tensor<B, 6> = x.reshape([n, c, h, 1, w, 1]);
    x.expand([n, c, h, 2, w, 2]).reshape([n, c, 2 * h, 2 * w])
}

/// The middle block: residual, attention, residual (`WanMidBlock`).
#[derive(Module, Debug)]
pub struct WanMidBlock<B: Backend> {
    /// `resnets.0`, `resnets.1`.
    pub resnets: Vec<WanResBlock<B>>,
    /// `attentions.0`.
    pub attention: WanAttentionBlock<B>,
}

impl<B: Backend> WanMidBlock<B> {
    pub(crate) fn new(c: usize, device: &B::Device) -> Self {
        Self {
            resnets: vec![
                WanResBlock::new(c, c, device),
                WanResBlock::new(c, c, device),
            ],
            attention: WanAttentionBlock::new(c, device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let x = self.resnets[0].forward(x, cache);
        let x = self.attention.forward(x);
        self.resnets[1].forward(x, cache)
    }
}
