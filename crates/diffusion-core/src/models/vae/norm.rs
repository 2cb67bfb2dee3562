//! The per-channel normalisation of VAE latents that DiTs work on, and decoding through it.

use super::VideoAutoencoder;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Per-channel normalisation of VAE latents: the DiT works on `(z - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentNorm {
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl LatentNorm {
    /// The per-channel statistics as broadcastable `[1, C, 1, 1, 1]` tensors `(mean, std)`.
    fn stats<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let c = self.mean.len();
        let t = |v: &Vec<f32>| {
            Tensor::<B, 5>::from_data(TensorData::new(v.clone(), [1, c, 1, 1, 1]), device)
        };
        (t(&self.mean), t(&self.std))
    }

    /// Encodes videos with `vae` to normalised latents (posterior means).
    ///
    /// # Shapes
    /// - `video`: `[B, 3, F, H, W]` -> `[B, C, F', H', W']`
    pub fn encode<B: Backend, V: VideoAutoencoder<B>>(
        &self,
        vae: &V,
        video: Tensor<B, 5>,
    ) -> Tensor<B, 5> {
        let (mean, std) = self.stats(&video.device());
        (vae.encode(video).mean - mean) / std
    }

    /// Decodes normalised latents with `vae`.
    ///
    /// # Shapes
    /// - `z`: `[B, C, F, H, W]` -> video `[B, 3, F', H', W']`
    pub fn decode<B: Backend, V: VideoAutoencoder<B>>(
        &self,
        vae: &V,
        z: Tensor<B, 5>,
    ) -> Tensor<B, 5> {
        vae.decode(self.denormalize(z))
    }

    /// The VAE's latents from normalised ones: `z * std + mean`.
    ///
    /// # Shapes
    /// - `z`: `[B, C, F, H, W]` -> same
    pub fn denormalize<B: Backend>(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        let (mean, std) = self.stats(&z.device());
        z * std + mean
    }
}
