//! The KL term of reward fine-tuning to the initial model.

use burn::tensor::{backend::AutodiffBackend, Tensor};
use diffusion_core::Schedule;
use diffusion_core::VelocityModel;

use crate::policy::Policy;

/// The policy's velocity at latent `z` of step `step` and the KL of its transition to the
/// initial model's there: the mean squared velocity difference (the KL of the two models'
/// Gaussian transitions up to a per-step constant; "VELR: Efficient Video Reward Feedback via
/// Ensemble Latent Reward Models", section 4.3).
///
/// # Shapes
/// - `z`: `[B, C, F, H, W]`, `text`: `[B, S, D]` -> (velocity `[B, C, F, H, W]`, KL `[1]`)
pub(crate) fn velocity_kl<B: AutodiffBackend, M: Policy<B>>(
    policy: &M,
    reference: &M::InnerModule,
    schedule: &Schedule,
    z: Tensor<B, 5>,
    step: usize,
    text: Tensor<B, 3>,
) -> (Tensor<B, 5>, Tensor<B, 1>) {
    let b = text.dims()[0];
    let t = Tensor::<B, 1>::full([b], schedule.timesteps()[step], &text.device());
    let v = policy.velocity(z.clone(), t.clone(), text.clone());
    let v_ref = reference.velocity(z.inner(), t.inner(), text.inner());
    let kl = (v.clone() - Tensor::from_inner(v_ref))
        .powi_scalar(2)
        .mean();
    (v, kl)
}
