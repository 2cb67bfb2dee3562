use burn::{
    module::Module,
    tensor::{backend::Backend, Tensor},
};

use super::{
    checkpointed::decode_frame,
    coder::{WanDecoder, WanEncoder},
    layers::{FeatCache, WanCausalConv3d},
    WanVaeConfig,
};
use crate::{
    error::{CoreError, Result},
    models::vae::{LatentDist, LatentNorm, VideoAutoencoder},
};

/// The Wan2.1 VAE (`AutoencoderKLWan`).
///
/// Encoding reads the first frame, then `temporal_factor` frames at a time; decoding writes one
/// latent frame at a time; a feature cache carries the causal convolutions' last frames from
/// chunk to chunk, so without gradients only one chunk's activations are alive at once.
///
/// # Shapes
/// - video `[B, 3, 1 + 4k, 8h, 8w]` in `[-1, 1]` <-> latent `[B, z_dim, 1 + k, h, w]`
#[derive(Module, Debug)]
pub struct WanVae<B: Backend> {
    /// `encoder`.
    pub encoder: WanEncoder<B>,
    /// `quant_conv` (1x1x1).
    pub quant_conv: WanCausalConv3d<B>,
    /// `post_quant_conv` (1x1x1).
    pub post_quant_conv: WanCausalConv3d<B>,
    /// `decoder`.
    pub decoder: WanDecoder<B>,
    #[module(skip)]
    config: WanVaeConfig,
}

impl<B: Backend> WanVae<B> {
    pub(crate) fn new(cfg: &WanVaeConfig, device: &B::Device) -> Self {
        let z = cfg.z_dim;
        Self {
            encoder: WanEncoder::new(cfg, device),
            quant_conv: WanCausalConv3d::cube(2 * z, 2 * z, 1, device),
            post_quant_conv: WanCausalConv3d::cube(z, z, 1, device),
            decoder: WanDecoder::new(cfg, device),
            config: cfg.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &WanVaeConfig {
        &self.config
    }

    /// `(z - latents_mean) / latents_std`, the DiT's latent normalisation.
    pub fn latent_norm(&self) -> LatentNorm {
        self.config.latent_norm()
    }

    /// Checks a video shape `[B, C, F, H, W]` and gives its latent shape.
    ///
    /// # Errors
    /// `Shape` when channels differ, `F` is not `1 + k * temporal_factor`, or `H`, `W` are
    /// not multiples of the spatial factor.
    pub fn checked_latent_shape(&self, video: [usize; 5]) -> Result<[usize; 5]> {
        let [b, c, f, h, w] = video;
        let (t, s) = (self.config.temporal_factor(), self.config.spatial_factor());
        if b == 0
            || c != self.config.in_channels
            || f == 0
            || (f - 1) % t != 0
            || h % s != 0
            || w % s != 0
            || h == 0
            || w == 0
        {
            return Err(CoreError::Shape {
                what: format!(
                    "video [B, {}, 1 + {t} k, {s} h, {s} w]",
                    self.config.in_channels
                ),
                expected: vec![
                    b.max(1),
                    self.config.in_channels,
                    1 + t * ((f.max(1) - 1) / t),
                    s * (h / s).max(1),
                    s * (w / s).max(1),
                ],
                found: video.to_vec(),
            });
        }
        Ok([b, self.config.z_dim, 1 + (f - 1) / t, h / s, w / s])
    }

    /// Encodes a video chunk by chunk; the posterior's `mean` is diffusers'
    /// `encode(video).latent_dist.mean` (unnormalised).
    ///
    /// # Shapes
    /// - `video`: `[B, 3, 1 + 4k, 8h, 8w]` -> mean, logvar `[B, z_dim, 1 + k, h, w]`
    pub fn encode_video(&self, video: Tensor<B, 5>) -> LatentDist<B> {
        let f = video.dims()[2];
        let t = self.config.temporal_factor();
        let mut cache = FeatCache::new();
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < f {
            let len = if start == 0 { 1 } else { t.min(f - start) };
            cache.rewind();
            chunks.push(
                self.encoder
                    .forward(video.clone().narrow(2, start, len), &mut cache),
            );
            start += len;
        }
        let out = self.quant_conv.forward(Tensor::cat(chunks, 2), None);
        let z = self.config.z_dim;
        LatentDist {
            mean: out.clone().narrow(1, 0, z),
            logvar: out.narrow(1, z, z).clamp(-30.0, 20.0),
        }
    }

    /// Decodes latents one latent frame at a time, clamped to `[-1, 1]` (diffusers'
    /// `decode(z).sample`).
    ///
    /// # Shapes
    /// - `latent`: `[B, z_dim, 1 + k, h, w]` (unnormalised) -> `[B, 3, 1 + 4k, 8h, 8w]`
    pub fn decode_latent(&self, latent: Tensor<B, 5>) -> Tensor<B, 5> {
        let stages = self.decode_stages();
        let mut cache = FeatCache::new();
        let frames: Vec<_> = (0..latent.dims()[2])
            .map(|i| decode_frame(&stages, latent.clone().narrow(2, i, 1), &mut cache))
            .collect();
        Tensor::cat(frames, 2)
    }
}

impl<B: Backend> VideoAutoencoder<B> for WanVae<B> {
    fn encode(&self, video: Tensor<B, 5>) -> LatentDist<B> {
        self.encode_video(video)
    }

    fn decode(&self, latent: Tensor<B, 5>) -> Tensor<B, 5> {
        self.decode_latent(latent)
    }

    fn latent_shape(&self, video: [usize; 5]) -> Result<[usize; 5]> {
        self.checked_latent_shape(video)
    }
}
