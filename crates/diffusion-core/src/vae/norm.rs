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
    /// Decodes normalised latents with `vae`.
    ///
    /// # Shapes
    /// - `z`: `[B, C, F, H, W]` -> video `[B, 3, F', H', W']`
    pub fn decode<B: Backend, V: VideoAutoencoder<B>>(
        &self,
        vae: &V,
        z: Tensor<B, 5>,
    ) -> Tensor<B, 5> {
        let c = self.mean.len();
        let dev = z.device();
        let t = |v: &Vec<f32>| {
            Tensor::<B, 5>::from_data(TensorData::new(v.clone(), [1, c, 1, 1, 1]), &dev)
        };
        vae.decode(z * t(&self.std) + t(&self.mean))
    }
}
