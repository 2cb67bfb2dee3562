use burn::tensor::{backend::Backend, Tensor};

use crate::error::Result;

/// A diagonal Gaussian posterior `q(z | video) = N(mean, exp(logvar))`.
///
/// # Shapes
/// - `mean`, `logvar`: `[B, C_z, F_z, H_z, W_z]`
#[derive(Debug, Clone)]
pub struct LatentDist<B: Backend> {
    /// Posterior mean.
    pub mean: Tensor<B, 5>,
    /// Posterior log-variance.
    pub logvar: Tensor<B, 5>,
}

impl<B: Backend> LatentDist<B> {
    /// Reparameterised sample `mean + exp(logvar / 2) * eps` (`eps` standard normal, same shape).
    pub fn sample(&self, eps: Tensor<B, 5>) -> Tensor<B, 5> {
        self.mean.clone() + self.logvar.clone().mul_scalar(0.5).exp() * eps
    }

    /// `KL(q || N(0, I))` averaged over latent elements:
    /// `0.5 * mean(mean^2 + exp(logvar) - 1 - logvar)` (Kingma & Welling 2014).
    pub fn kl(&self) -> Tensor<B, 1> {
        (self.mean.clone().powi_scalar(2) + self.logvar.clone().exp() - self.logvar.clone())
            .sub_scalar(1.0)
            .mean()
            .mul_scalar(0.5)
    }
}

/// Encodes RGB videos to latents and decodes them back.
///
/// # Shapes
/// - video: `[B, 3, F, H, W]`, values in `[-1, 1]`
/// - latent: `[B, C_z, F_z, H_z, W_z]`
pub trait VideoAutoencoder<B: Backend> {
    /// Posterior over latents.
    fn encode(&self, video: Tensor<B, 5>) -> LatentDist<B>;
    /// Reconstructs a video from latents.
    fn decode(&self, latent: Tensor<B, 5>) -> Tensor<B, 5>;
    /// Latent shape of a video of shape `video`, or a typed error if it cannot be encoded.
    fn latent_shape(&self, video: [usize; 5]) -> Result<[usize; 5]>;
}
