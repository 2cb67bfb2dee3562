//! A process reward from a clean-latent reward and the frozen generator's denoiser.

use std::marker::PhantomData;

use burn::tensor::{backend::Backend, Tensor};
use diffusion_core::VelocityModel;

use crate::base::{LatentReward, RewardRange};

/// Scores a noisy latent with a reward of clean latents applied to the frozen generator's
/// one-step prediction of the clean sample:
///
/// `r(x_sigma, sigma) = R(x_sigma - sigma v(x_sigma, scale * sigma), 0)`
///
/// with `v` the pretrained flow model's velocity (kept frozen: its parameters get no gradient,
/// the latent does). Like PRFL's process reward model ("Video Generation Models Are Good Latent Reward Models", section 3.2) it reads noisy
/// latents at any timestep through the pretrained generator, here all of it rather than its
/// first blocks; the clean-latent reward can be a VELR ensemble ("VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models"), whose regression
/// of the pixel reward is far better on clean latents than a model trained on noisy ones
/// (docs/results/reward_models.md). At `sigma = 0` it is `R` itself. Costs one forward (and, for a gradient,
/// one backward) of the generator per score.
///
/// # Shapes
/// - `latents`: `[B, C, F, H, W]`, `sigma`: `[B]`, `text`: `[B, S, D]` -> `[B]`
#[derive(Debug, Clone)]
pub struct DenoisedReward<B: Backend, D, R> {
    /// The frozen flow model whose velocity predicts the clean sample.
    pub denoiser: D,
    /// The reward of clean latents.
    pub reward: R,
    /// Model timestep per unit of `sigma` (flow matching: `num_train_timesteps`, 1000).
    pub timestep_scale: f64,
    backend: PhantomData<B>,
}

impl<B: Backend, D: VelocityModel<B>, R: LatentReward<B>> DenoisedReward<B, D, R> {
    /// Wraps `reward` with `denoiser`; the caller freezes the denoiser's parameters (burn's
    /// `Module::no_grad`) when gradients flow through it.
    pub fn new(denoiser: D, reward: R, timestep_scale: f64) -> Self {
        Self {
            denoiser,
            reward,
            timestep_scale,
            backend: PhantomData,
        }
    }

    /// The denoiser's prediction of the clean latents, `x_sigma - sigma v`.
    ///
    /// # Shapes
    /// - `latents`: `[B, C, F, H, W]`, `sigma`: `[B]`, `text`: `[B, S, D]` -> `[B, C, F, H, W]`
    pub fn denoise(
        &self,
        latents: Tensor<B, 5>,
        sigma: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> Tensor<B, 5> {
        let b = sigma.dims()[0];
        let v = self.denoiser.velocity(
            latents.clone(),
            sigma.clone().mul_scalar(self.timestep_scale),
            text,
        );
        latents - v * sigma.reshape([b, 1, 1, 1, 1])
    }
}

impl<B: Backend, D: VelocityModel<B>, R: LatentReward<B>> LatentReward<B>
    for DenoisedReward<B, D, R>
{
    fn score(
        &self,
        latents: Tensor<B, 5>,
        sigma: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> Tensor<B, 1> {
        let clean = self.denoise(latents, sigma.clone(), text.clone());
        self.reward.score(clean, sigma.zeros_like(), text)
    }

    fn range(&self) -> RewardRange {
        self.reward.range()
    }

    fn check_input(&self, latents: [usize; 5], text: [usize; 3]) -> crate::Result<()> {
        self.denoiser.check_input(latents, text)?;
        self.reward.check_input(latents, text)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use diffusion_core::backend::DefaultBackend;

    use super::*;

    type B = DefaultBackend;

    /// `v(x, t) = x * t / 1000`: with `t = 1000 sigma` the prediction is `x (1 - sigma^2)`.
    struct ScaledIdentity;

    impl VelocityModel<B> for ScaledIdentity {
        fn velocity(&self, x: Tensor<B, 5>, t: Tensor<B, 1>, _: Tensor<B, 3>) -> Tensor<B, 5> {
            let b = t.dims()[0];
            x * t.reshape([b, 1, 1, 1, 1]).div_scalar(1000.0)
        }

        fn check_input(&self, _: [usize; 5], _: [usize; 3]) -> diffusion_core::Result<()> {
            Ok(())
        }
    }

    /// The sum of the latent's entries.
    struct Sum;

    impl LatentReward<B> for Sum {
        fn score(&self, x: Tensor<B, 5>, _: Tensor<B, 1>, _: Tensor<B, 3>) -> Tensor<B, 1> {
            let b = x.dims()[0];
            x.reshape([b, 4]).sum_dim(1).reshape([b])
        }

        fn range(&self) -> RewardRange {
            RewardRange::Real
        }

        fn check_input(&self, _: [usize; 5], _: [usize; 3]) -> crate::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn scores_the_denoisers_clean_prediction_by_hand() {
        let dev = Default::default();
        // two latents of 4 ones, at sigma 0 and 0.5: sums 4 (1 - 0) = 4 and 4 (1 - 0.25) = 3
        let x = Tensor::<B, 5>::ones([2, 1, 1, 2, 2], &dev);
        let sigma = Tensor::<B, 1>::from_data(TensorData::from([0.0f32, 0.5]), &dev);
        let text = Tensor::<B, 3>::zeros([2, 1, 1], &dev);
        let r = DenoisedReward::new(ScaledIdentity, Sum, 1000.0);
        let s: Vec<f32> = r.score(x, sigma, text).into_data().to_vec().unwrap();
        assert_eq!(s, vec![4.0, 3.0]);
        assert_eq!(r.range(), RewardRange::Real);
    }
}
