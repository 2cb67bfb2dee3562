//! The flow-matching (SFT) objective (Lipman et al. 2023; Esser et al. 2024 for the shifted and
//! logit-normal timestep densities).

use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::{rngs::StdRng, Rng};
use rand_distr::{Distribution, StandardNormal};

use crate::{models::model::VelocityModel, sampling::schedule::shift_sigma};

/// How training noise levels are drawn.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum TimestepSampling {
    /// `sigma ~ U(0, 1)`, then shifted.
    Uniform {
        /// Timestep shift applied to the draw (1 = none).
        shift: f64,
    },
    /// `sigma = sigmoid(N(mean, std))`, SD3's logit-normal density, then shifted.
    LogitNormal {
        /// Mean of the normal.
        mean: f64,
        /// Standard deviation of the normal.
        std: f64,
        /// Timestep shift applied to the draw (1 = none).
        shift: f64,
    },
}

impl TimestepSampling {
    /// Draws `n` noise levels in `(0, 1)`.
    pub fn sample(&self, n: usize, rng: &mut StdRng) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let (s, shift) = match *self {
                    TimestepSampling::Uniform { shift } => (rng.random_range(1e-4..1.0), shift),
                    TimestepSampling::LogitNormal { mean, std, shift } => {
                        let z: f64 = StandardNormal.sample(rng);
                        (1.0 / (1.0 + (-(mean + std * z)).exp()), shift)
                    }
                };
                shift_sigma(s, shift)
            })
            .collect()
    }
}

/// Flow-matching loss `mean || v_theta(x_sigma, T sigma) - (eps - x0) ||^2` with
/// `x_sigma = (1 - sigma) x0 + sigma eps`, per sample.
///
/// # Shapes
/// - `x0`, `eps`: `[B, C, F, H, W]`; `sigmas`: `B` values; `text`: `[B, S, D_text]`
/// - output: `[B]`
pub fn flow_matching_loss<B: Backend, M: VelocityModel<B>>(
    model: &M,
    x0: Tensor<B, 5>,
    eps: Tensor<B, 5>,
    sigmas: &[f64],
    num_train_timesteps: usize,
    text: Tensor<B, 3>,
) -> Tensor<B, 1> {
    let device = x0.device();
    let b = x0.dims()[0];
    let s32: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
    let sigma = Tensor::<B, 1>::from_data(TensorData::new(s32, [b]), &device);
    let s5: Tensor<B, 5> = sigma.clone().reshape([b, 1, 1, 1, 1]);
    let x_t = x0.clone() * (s5.clone().neg().add_scalar(1.0)) + eps.clone() * s5;
    let v = model.velocity(x_t, sigma.mul_scalar(num_train_timesteps as f64), text);
    let err: Tensor<B, 2> = (v - (eps - x0)).powi_scalar(2).reshape([b as i32, -1]);
    err.mean_dim(1).reshape([b])
}
