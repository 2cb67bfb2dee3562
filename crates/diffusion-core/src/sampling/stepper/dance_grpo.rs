use burn::tensor::{backend::Backend, Tensor};

use super::{LogProbReduction, Stepper, Transition};

/// The DanceGRPO SDE step (Xue et al. 2025, arXiv 2505.07818, eq. 6; `flux_step` in DanceGRPO).
///
/// `x0_hat = x - sigma v`, `score = -(x - (1 - sigma) x0_hat) / sigma^2`,
/// `mean = x + dt v - 0.5 eta^2 score dt`, `std = eta sqrt(sigma - sigma_next)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DanceGrpoSde {
    /// Noise scale `eta` (0.3 in DanceGRPO's video recipes).
    pub eta: f64,
    /// Log-prob reduction.
    pub reduction: LogProbReduction,
}

impl Default for DanceGrpoSde {
    fn default() -> Self {
        Self {
            eta: 0.3,
            reduction: LogProbReduction::Mean,
        }
    }
}

impl Stepper for DanceGrpoSde {
    fn transition<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        v: Tensor<B, D>,
        sigma: f64,
        sigma_next: f64,
    ) -> Transition<B, D> {
        let dt = sigma_next - sigma;
        // x - (1 - sigma) x0_hat = x - (1 - sigma)(x - sigma v) = sigma x + sigma (1 - sigma) v
        // score = -(x + (1 - sigma) v) / sigma
        let score = (x.clone() + v.clone().mul_scalar(1.0 - sigma)).div_scalar(-sigma);
        let mean = x + v.mul_scalar(dt) - score.mul_scalar(0.5 * self.eta * self.eta * dt);
        Transition {
            mean,
            std: self.eta * (-dt).sqrt(),
        }
    }

    fn is_stochastic(&self) -> bool {
        self.eta > 0.0
    }

    fn reduction(&self) -> LogProbReduction {
        self.reduction
    }
}
