//! What scores the final latents of GRPO's rollouts.

use burn::tensor::{backend::Backend, Tensor};
use diffusion_core::models::vae::{LatentNorm, VideoAutoencoder};
use latent_reward::{LatentReward, PixelReward};

use crate::error::{GrpoError, Result};

/// Scores clean (final) latents of a batch of rollouts; higher is better.
pub trait GroupReward<B: Backend, P> {
    /// One reward per rollout.
    ///
    /// # Shapes
    /// - `latents`: `[B, C, F, H, W]` normalised, `text`: `[B, S, D]`, output `[B]`
    fn rewards(
        &self,
        latents: Tensor<B, 5>,
        prompts: &[P],
        text: Tensor<B, 3>,
    ) -> Result<Tensor<B, 1>>;
}

/// Any [`LatentReward`] at noise level 0: a single latent reward model, or an `Ensemble` (whose
/// `Aggregation::LowerConfidenceBound { k }` is GRPO's uncertainty penalty `mean - k std`).
#[derive(Debug, Clone)]
pub struct LatentScore<M>(pub M);

impl<B: Backend, P, M: LatentReward<B>> GroupReward<B, P> for LatentScore<M> {
    fn rewards(
        &self,
        latents: Tensor<B, 5>,
        _prompts: &[P],
        text: Tensor<B, 3>,
    ) -> Result<Tensor<B, 1>> {
        self.0
            .check_input(latents.dims(), text.dims())
            .map_err(GrpoError::Reward)?;
        let b = latents.dims()[0];
        let sigma = Tensor::zeros([b], &latents.device());
        Ok(self.0.score(latents, sigma, text))
    }
}

/// A pixel reward of the decoded video: every sample decoded with the VAE.
#[derive(Debug, Clone)]
pub struct PixelScore<V, R> {
    /// The VAE.
    pub vae: V,
    /// The latent normalisation of the DiT.
    pub norm: LatentNorm,
    /// The pixel reward.
    pub pixel: R,
}

impl<B, P, V, R> GroupReward<B, P> for PixelScore<V, R>
where
    B: Backend,
    V: VideoAutoencoder<B>,
    R: PixelReward<B, Prompt = P>,
{
    fn rewards(
        &self,
        latents: Tensor<B, 5>,
        prompts: &[P],
        _text: Tensor<B, 3>,
    ) -> Result<Tensor<B, 1>> {
        let video = self.norm.decode(&self.vae, latents);
        self.pixel
            .score_pixels(video, prompts)
            .map_err(GrpoError::Reward)
    }
}
