use burn::{
    config::Config,
    module::Module,
    tensor::{activation::silu, backend::Backend, Tensor},
};

use super::{
    CausalConv3d, FrameGroupNorm, LatentDist, ResBlock3d, TemporalDown, TemporalUp,
    VideoAutoencoder,
};
use crate::error::{invalid, CoreError};

/// Configuration of a [`CausalVae`].
///
/// Spatial compression is `patch * 2^spatial_stages`, temporal compression `2^temporal_stages`;
/// both kinds of downsampling happen in the deepest stages, with Wan's `1 + 2^t k` frame layout
/// (the first frame is encoded on its own, like an image). `patch > 1` folds `patch x patch`
/// pixel blocks into channels before the first convolution (and unfolds them after the last),
/// which makes the VAE cheap enough to train on a CPU.
#[derive(Config, Debug, PartialEq)]
pub struct CausalVaeConfig {
    /// Latent channels.
    pub latent_channels: usize,
    /// Width of each down/up stage, shallowest first.
    pub channels: Vec<usize>,
    /// Number of (deepest) stages that halve height and width; `None` means every stage.
    #[config(default = "None")]
    pub spatial_stages: Option<usize>,
    /// Number of (deepest) stages that also halve the frame count.
    #[config(default = 2)]
    pub temporal_stages: usize,
    /// Pixel-block size folded into channels at the input (1 = none).
    #[config(default = 1)]
    pub patch: usize,
    /// Video channels.
    #[config(default = 3)]
    pub video_channels: usize,
    /// GroupNorm groups (clamped to the width).
    #[config(default = 8)]
    pub groups: usize,
}

impl CausalVaeConfig {
    /// Spatial compression factor.
    pub fn spatial_factor(&self) -> usize {
        self.patch << self.num_spatial_stages()
    }

    fn num_spatial_stages(&self) -> usize {
        self.spatial_stages.unwrap_or(self.channels.len())
    }

    /// Temporal compression factor.
    pub fn temporal_factor(&self) -> usize {
        1 << self.temporal_stages
    }

    /// Builds a randomly initialised VAE.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<CausalVae<B>> {
        if self.channels.is_empty() || self.channels.contains(&0) {
            return Err(invalid(
                "channels",
                "need at least one stage, all widths > 0",
            ));
        }
        if self.temporal_stages > self.channels.len() {
            return Err(invalid(
                "temporal_stages",
                format!(
                    "{} exceeds the {} stages",
                    self.temporal_stages,
                    self.channels.len()
                ),
            ));
        }
        if self.num_spatial_stages() > self.channels.len() || self.patch == 0 {
            return Err(invalid(
                "spatial_stages/patch",
                "spatial stages must not exceed the stages; patch must be > 0",
            ));
        }
        if self.latent_channels == 0 || self.video_channels == 0 || self.groups == 0 {
            return Err(invalid(
                "latent_channels/video_channels/groups",
                "must be > 0",
            ));
        }
        let ch = &self.channels;
        let n = ch.len();
        let g = self.groups;
        let temporal = |i: usize| i >= n - self.temporal_stages;
        let spatial = |i: usize| i >= n - self.num_spatial_stages();
        let video_in = self.video_channels * self.patch * self.patch;
        let last = ch[n - 1];
        let enc_stages = (0..n)
            .map(|i| EncoderStage {
                res: ResBlock3d::new(if i == 0 { ch[0] } else { ch[i - 1] }, ch[i], g, device),
                down: spatial(i).then(|| CausalConv3d::new(ch[i], ch[i], 1, 3, 2, device)),
                time: temporal(i).then(|| TemporalDown::new(ch[i], device)),
            })
            .collect();
        let dec_stages = (0..n)
            .rev()
            .map(|i| DecoderStage {
                res: ResBlock3d::new(if i == n - 1 { last } else { ch[i + 1] }, ch[i], g, device),
                time: temporal(i).then(|| TemporalUp::new(ch[i], device)),
                up: spatial(i).then(|| CausalConv3d::new(ch[i], ch[i], 1, 3, 1, device)),
            })
            .collect();
        let norm = |c: usize| FrameGroupNorm::new(g, c, device);
        Ok(crate::io::checkpoint::materialize(CausalVae {
            enc_in: CausalConv3d::new(video_in, ch[0], 3, 3, 1, device),
            enc_stages,
            enc_mid: ResBlock3d::new(last, last, g, device),
            enc_norm: norm(last),
            enc_out: CausalConv3d::new(last, 2 * self.latent_channels, 3, 3, 1, device),
            dec_in: CausalConv3d::new(self.latent_channels, last, 3, 3, 1, device),
            dec_mid: ResBlock3d::new(last, last, g, device),
            dec_stages,
            dec_norm: norm(ch[0]),
            dec_out: CausalConv3d::new(ch[0], video_in, 3, 3, 1, device),
            latent_channels: self.latent_channels,
            video_channels: self.video_channels,
            spatial: self.spatial_factor(),
            patch: self.patch,
            temporal: self.temporal_factor(),
        }))
    }
}

#[derive(Module, Debug)]
struct EncoderStage<B: Backend> {
    res: ResBlock3d<B>,
    down: Option<CausalConv3d<B>>,
    time: Option<TemporalDown<B>>,
}

#[derive(Module, Debug)]
struct DecoderStage<B: Backend> {
    res: ResBlock3d<B>,
    time: Option<TemporalUp<B>>,
    up: Option<CausalConv3d<B>>,
}

/// Nearest-neighbour 2x spatial upsampling.
///
/// # Shapes
/// - `[B, C, F, H, W]` -> `[B, C, F, 2H, 2W]`
fn upsample2x<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, c, f, h, w] = x.dims();
    let x: Tensor<B, 6> = x.unsqueeze_dim(4);
    let x: Tensor<B, 5> = x.repeat_dim(4, 2).reshape([b, c, f, 2 * h, w]);
    let x: Tensor<B, 6> = x.unsqueeze_dim(5);
    x.repeat_dim(5, 2).reshape([b, c, f, 2 * h, 2 * w])
}

/// A small causal 3D-convolutional VAE in the style of Wan-VAE: causal convolutions, residual
/// blocks with GroupNorm and SiLU, strided spatial downsampling, pairwise temporal downsampling
/// after a lone first frame.
#[derive(Module, Debug)]
pub struct CausalVae<B: Backend> {
    enc_in: CausalConv3d<B>,
    enc_stages: Vec<EncoderStage<B>>,
    enc_mid: ResBlock3d<B>,
    enc_norm: FrameGroupNorm<B>,
    enc_out: CausalConv3d<B>,
    dec_in: CausalConv3d<B>,
    dec_mid: ResBlock3d<B>,
    dec_stages: Vec<DecoderStage<B>>,
    dec_norm: FrameGroupNorm<B>,
    dec_out: CausalConv3d<B>,
    latent_channels: usize,
    video_channels: usize,
    spatial: usize,
    temporal: usize,
    patch: usize,
}

/// Folds `p x p` pixel blocks into channels: `[B, C, F, H, W]` -> `[B, C p^2, F, H / p, W / p]`.
fn fold<B: Backend>(x: Tensor<B, 5>, p: usize) -> Tensor<B, 5> {
    if p == 1 {
        return x;
    }
    let [b, c, f, h, w] = x.dims();
    let x: Tensor<B, 6> = x.reshape([b * c, f, h / p, p, w / p, p]);
    // -> [B C, p, p, F, H/p, W/p]
    x.permute([0, 3, 5, 1, 2, 4])
        .reshape([b, c * p * p, f, h / p, w / p])
}

/// Inverse of [`fold`].
fn unfold<B: Backend>(x: Tensor<B, 5>, p: usize) -> Tensor<B, 5> {
    if p == 1 {
        return x;
    }
    let [b, cpp, f, hp, wp] = x.dims();
    let c = cpp / (p * p);
    let x: Tensor<B, 6> = x.reshape([b * c, p, p, f, hp, wp]);
    // -> [B C, F, H/p, p, W/p, p]
    x.permute([0, 3, 4, 1, 5, 2])
        .reshape([b, c, f, hp * p, wp * p])
}

impl<B: Backend> CausalVae<B> {
    /// Spatial and temporal compression factors.
    pub fn compression(&self) -> (usize, usize) {
        (self.spatial, self.temporal)
    }

    /// Latent channels.
    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }
}

impl<B: Backend> VideoAutoencoder<B> for CausalVae<B> {
    fn encode(&self, video: Tensor<B, 5>) -> LatentDist<B> {
        let mut x = self.enc_in.forward(fold(video, self.patch));
        for s in &self.enc_stages {
            x = s.res.forward(x);
            if let Some(d) = &s.down {
                x = d.forward(x);
            }
            if let Some(t) = &s.time {
                x = t.forward(x);
            }
        }
        let x = self.enc_mid.forward(x);
        let x = self.enc_out.forward(silu(self.enc_norm.forward(x)));
        let z = self.latent_channels;
        LatentDist {
            mean: x.clone().narrow(1, 0, z),
            logvar: x.narrow(1, z, z).clamp(-30.0, 20.0),
        }
    }

    fn decode(&self, latent: Tensor<B, 5>) -> Tensor<B, 5> {
        let mut x = self.dec_mid.forward(self.dec_in.forward(latent));
        for s in &self.dec_stages {
            x = s.res.forward(x);
            if let Some(t) = &s.time {
                x = t.forward(x);
            }
            if let Some(u) = &s.up {
                x = u.forward(upsample2x(x));
            }
        }
        unfold(
            self.dec_out.forward(silu(self.dec_norm.forward(x))),
            self.patch,
        )
    }

    fn latent_shape(&self, video: [usize; 5]) -> crate::Result<[usize; 5]> {
        let [b, c, f, h, w] = video;
        let (s, t) = (self.spatial, self.temporal);
        if c != self.video_channels
            || b == 0
            || f == 0
            || (f - 1) % t != 0
            || h % s != 0
            || w % s != 0
            || h == 0
            || w == 0
        {
            return Err(CoreError::Shape {
                what: format!(
                    "video for the VAE (channels {}, frames 1 + {t}k, height and width multiples of {s})",
                    self.video_channels
                ),
                expected: vec![b.max(1), self.video_channels, 1 + t * ((f.max(1) - 1) / t), h / s * s, w / s * s],
                found: video.to_vec(),
            });
        }
        Ok([b, self.latent_channels, 1 + (f - 1) / t, h / s, w / s])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn_flex::Flex;

    #[test]
    fn shapes_follow_the_wan_layout() {
        let dev = Default::default();
        let vae = CausalVaeConfig::new(4, vec![8, 8])
            .with_temporal_stages(2)
            .init::<B>(&dev)
            .unwrap();
        let video = Tensor::<B, 5>::zeros([1, 3, 9, 16, 16], &dev);
        let expect = vae.latent_shape(video.dims()).unwrap();
        assert_eq!(expect, [1, 4, 3, 4, 4]);
        let z = vae.encode(video).mean;
        assert_eq!(z.dims(), expect);
        assert_eq!(vae.decode(z).dims(), [1, 3, 9, 16, 16]);
        assert!(vae.latent_shape([1, 3, 8, 16, 16]).is_err());
        // one frame (an image) is one latent frame, and decoding the first latent frame alone
        // gives the first frame of the full decoding (the decoder is causal too)
        let video =
            Tensor::<B, 5>::random([1, 3, 9, 16, 16], burn::tensor::Distribution::Default, &dev);
        let z = vae.encode(video.clone().narrow(2, 0, 1)).mean;
        assert_eq!(z.dims(), [1, 4, 1, 4, 4]);
        let full = vae.decode(vae.encode(video).mean);
        let first = vae.decode(z);
        assert_eq!(first.dims(), [1, 3, 1, 16, 16]);
        first.into_data().assert_approx_eq::<f32>(
            &full.narrow(2, 0, 1).into_data(),
            burn::tensor::Tolerance::absolute(1e-5),
        );
    }

    #[test]
    fn fold_unfold_round_trip_and_patch_layout() {
        let dev = Default::default();
        let x = Tensor::<B, 5>::random([2, 3, 5, 8, 12], burn::tensor::Distribution::Default, &dev);
        let y = fold(x.clone(), 4);
        assert_eq!(y.dims(), [2, 48, 5, 2, 3]);
        x.clone()
            .into_data()
            .assert_eq(&unfold(y, 4).into_data(), true);
        let vae = CausalVaeConfig::new(4, vec![8, 8])
            .with_patch(4)
            .with_spatial_stages(Some(0))
            .init::<B>(&dev)
            .unwrap();
        assert_eq!(
            vae.latent_shape([1, 3, 9, 16, 16]).unwrap(),
            [1, 4, 3, 4, 4]
        );
        let z = vae.encode(Tensor::zeros([1, 3, 9, 16, 16], &dev)).mean;
        assert_eq!(z.dims(), [1, 4, 3, 4, 4]);
        assert_eq!(vae.decode(z).dims(), [1, 3, 9, 16, 16]);
    }

    #[test]
    fn encoder_is_causal_in_time() {
        // changing the last frames must not change the first latent frame
        let dev = Default::default();
        let vae = CausalVaeConfig::new(4, vec![8])
            .with_temporal_stages(1)
            .init::<B>(&dev)
            .unwrap();
        let a = Tensor::<B, 5>::random([1, 3, 5, 8, 8], burn::tensor::Distribution::Default, &dev);
        let tail = Tensor::<B, 5>::ones([1, 3, 4, 8, 8], &dev);
        let b = Tensor::cat(vec![a.clone().narrow(2, 0, 1), tail], 2);
        let za = vae.encode(a).mean.narrow(2, 0, 1);
        let zb = vae.encode(b).mean.narrow(2, 0, 1);
        za.into_data()
            .assert_approx_eq::<f32>(&zb.into_data(), burn::tensor::Tolerance::absolute(1e-6));
    }

    #[test]
    fn kl_of_standard_normal_is_zero() {
        let dev = Default::default();
        let d = LatentDist::<B> {
            mean: Tensor::zeros([1, 1, 1, 2, 2], &dev),
            logvar: Tensor::zeros([1, 1, 1, 2, 2], &dev),
        };
        assert!(d.kl().into_scalar().abs() < 1e-7);
        // mean 1, logvar 0: 0.5 * (1 + 1 - 1 - 0) = 0.5
        let d = LatentDist::<B> {
            mean: Tensor::ones([1, 1, 1, 2, 2], &dev),
            logvar: Tensor::zeros([1, 1, 1, 2, 2], &dev),
        };
        assert!((d.kl().into_scalar() - 0.5).abs() < 1e-6);
    }
}
