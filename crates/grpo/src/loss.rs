//! GRPO's policy objective for flow models: the clipped surrogate and the KL to a frozen
//! reference (Flow-GRPO, arXiv 2505.05470, eq. 7-10).

use burn::tensor::{backend::Backend, Tensor};
use diffusion_core::LogProbReduction;

/// PPO's clipped surrogate, to minimise, averaged over the batch:
/// `mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps))` with
/// `rho_i = exp(log_prob_i - old_log_prob_i)`; `old_log_prob` is treated as a constant.
///
/// Where the ratio has left the clip range on the side the advantage pushes it towards, the
/// clipped term is the maximum and the gradient is exactly zero.
///
/// # Shapes
/// - `log_prob`, `old_log_prob`, `advantages`: `[B]`
/// - output: `[1]`
pub fn clipped_surrogate<B: Backend>(
    log_prob: Tensor<B, 1>,
    old_log_prob: Tensor<B, 1>,
    advantages: Tensor<B, 1>,
    clip: f64,
) -> Tensor<B, 1> {
    let ratio = (log_prob - old_log_prob.detach()).exp();
    let advantages = advantages.detach();
    let unclipped = advantages.clone().neg() * ratio.clone();
    let clipped = advantages.neg() * ratio.clamp(1.0 - clip, 1.0 + clip);
    unclipped.max_pair(clipped).mean()
}

/// KL divergence between the policy's and the reference's Gaussian transitions of one step,
/// which share the standard deviation `std`: `|| mean - ref_mean ||^2 / (2 std^2)`, reduced over
/// the non-batch elements like the log-probs (`Mean` as Flow-GRPO's code).
///
/// # Shapes
/// - `mean`, `ref_mean`: `[B, ...]`
/// - output: `[B]`
pub fn transition_kl<B: Backend, const D: usize>(
    mean: Tensor<B, D>,
    ref_mean: Tensor<B, D>,
    std: f64,
    reduction: LogProbReduction,
) -> Tensor<B, 1> {
    reduction.reduce(
        (mean - ref_mean.detach())
            .powi_scalar(2)
            .div_scalar(2.0 * std * std),
    )
}
