use burn::tensor::{backend::Backend, Tensor};

use super::{LogProbReduction, Stepper, Transition};

/// The Flow-GRPO SDE step (Liu et al. 2025, arXiv 2505.05470, eq. 9; `sde_step_with_logprob` in
/// yifan123/flow_grpo), the reverse SDE whose marginals match the flow ODE's.
///
/// With `dt = sigma_next - sigma < 0` and `s = a * sqrt(sigma / (1 - sigma))`:
/// `mean = x + dt (v + s^2 / (2 sigma) (x + (1 - sigma) v))`, `std = s sqrt(-dt)`.
/// At `sigma = 1` the ratio is taken with `sigma_next` in the denominator, as the released code
/// does with the schedule's second level.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowGrpoSde {
    /// Noise level `a` (0.7 in Flow-GRPO).
    pub noise_level: f64,
    /// Log-prob reduction (`Mean` in the released code).
    pub reduction: LogProbReduction,
}

impl Default for FlowGrpoSde {
    fn default() -> Self {
        Self {
            noise_level: 0.7,
            reduction: LogProbReduction::Mean,
        }
    }
}

impl FlowGrpoSde {
    /// The diffusion coefficient `s` at `sigma` (before the `sqrt(-dt)` factor).
    pub fn diffusion(&self, sigma: f64, sigma_next: f64) -> f64 {
        let denom = if sigma >= 1.0 {
            1.0 - sigma_next
        } else {
            1.0 - sigma
        };
        self.noise_level * (sigma / denom).sqrt()
    }
}

impl Stepper for FlowGrpoSde {
    fn transition<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        v: Tensor<B, D>,
        sigma: f64,
        sigma_next: f64,
    ) -> Transition<B, D> {
        let dt = sigma_next - sigma;
        let s = self.diffusion(sigma, sigma_next);
        let k = s * s / (2.0 * sigma);
        // x (1 + k dt) + v (1 + k (1 - sigma)) dt
        let mean = x.mul_scalar(1.0 + k * dt) + v.mul_scalar((1.0 + k * (1.0 - sigma)) * dt);
        Transition {
            mean,
            std: s * (-dt).sqrt(),
        }
    }

    fn is_stochastic(&self) -> bool {
        self.noise_level > 0.0
    }

    fn reduction(&self) -> LogProbReduction {
        self.reduction
    }
}
