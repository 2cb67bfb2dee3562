use burn::tensor::{backend::Backend, Tensor};

use super::{Stepper, Transition};

/// Deterministic Euler step of the probability-flow ODE: `x_next = x + (sigma_next - sigma) v`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EulerOde;

impl Stepper for EulerOde {
    fn transition<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        v: Tensor<B, D>,
        sigma: f64,
        sigma_next: f64,
    ) -> Transition<B, D> {
        Transition {
            mean: x + v.mul_scalar(sigma_next - sigma),
            std: 0.0,
        }
    }

    fn is_stochastic(&self) -> bool {
        false
    }
}
