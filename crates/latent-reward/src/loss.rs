//! Training losses of reward models.

use burn::tensor::{activation, backend::Backend, Tensor};

/// Loss for preference pairs `(winner, loser)` of one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PreferenceLoss {
    /// Bradley-Terry: `BCE(sigmoid(f(x_w) - f(x_l)), 1)` on the models' logits (PRFL "Video Generation Models Are Good Latent Reward Models",
    /// section 3.2). The sigmoid outputs of [`crate::ProcessReward`] are mapped back to logits.
    BradleyTerry,
    /// Independent binary labels: `BCE(f(x_w), 1) + BCE(f(x_l), 0)`.
    Bce,
}

impl PreferenceLoss {
    /// Per-pair loss from the two scores, in `(0, 1)` (probabilities).
    ///
    /// # Shapes
    /// - `winner`, `loser`: `[B]` -> `[B]`
    pub fn forward<B: Backend>(&self, winner: Tensor<B, 1>, loser: Tensor<B, 1>) -> Tensor<B, 1> {
        match self {
            Self::BradleyTerry => {
                let margin = logit(winner) - logit(loser);
                // -log sigmoid(m) = softplus(-m)
                activation::softplus(margin.neg(), 1.0)
            }
            Self::Bce => {
                let eps = 1e-6;
                let w = winner.clamp(eps, 1.0 - eps);
                let l = loser.clamp(eps, 1.0 - eps);
                w.log().neg() - (l.neg() + 1.0).log()
            }
        }
    }
}

/// Logit of probabilities clamped away from 0 and 1.
fn logit<B: Backend>(p: Tensor<B, 1>) -> Tensor<B, 1> {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    p.clone().log() - (p.neg() + 1.0).log()
}

/// Loss for regressing a reward.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RegressionLoss {
    /// Squared error.
    Mse,
    /// Huber loss with threshold `delta` (VELR "VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models", section 4.1): quadratic within
    /// `delta`, linear beyond.
    Huber {
        /// Threshold between the quadratic and linear parts.
        delta: f64,
    },
}

impl RegressionLoss {
    /// Per-sample loss.
    ///
    /// # Shapes
    /// - `pred`, `target`: `[B]` -> `[B]`
    pub fn forward<B: Backend>(&self, pred: Tensor<B, 1>, target: Tensor<B, 1>) -> Tensor<B, 1> {
        let err = pred - target;
        match *self {
            Self::Mse => err.powi_scalar(2),
            Self::Huber { delta } => {
                let abs = err.abs();
                let quad = abs.clone().clamp_max(delta);
                // 0.5 q^2 + delta (|e| - q): q = min(|e|, delta)
                quad.clone().powi_scalar(2).mul_scalar(0.5) + (abs - quad).mul_scalar(delta)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use diffusion_core::backend::DefaultBackend as B;

    use super::*;

    fn t(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }

    fn vals(x: Tensor<B, 1>) -> Vec<f32> {
        x.into_data().to_vec().unwrap()
    }

    #[test]
    fn huber_by_hand() {
        // errors 0.5 and 3 with delta 1: 0.125 and 1 * (3 - 0.5) = 2.5
        let l = RegressionLoss::Huber { delta: 1.0 }.forward(t(&[1.5, -2.0]), t(&[1.0, 1.0]));
        let v = vals(l);
        assert!(
            (v[0] - 0.125).abs() < 1e-6 && (v[1] - 2.5).abs() < 1e-6,
            "{v:?}"
        );
        let m = vals(RegressionLoss::Mse.forward(t(&[1.5]), t(&[1.0])));
        assert!((m[0] - 0.25).abs() < 1e-6);
    }

    #[test]
    fn bradley_terry_by_hand() {
        // equal scores: log 2; winner logit 2 vs loser 0: softplus(-2) = 0.126928
        let s = 1.0 / (1.0 + (-2.0f32).exp());
        let v = vals(PreferenceLoss::BradleyTerry.forward(t(&[0.5, s]), t(&[0.5, 0.5])));
        assert!((v[0] - std::f32::consts::LN_2).abs() < 1e-5, "{v:?}");
        assert!((v[1] - 0.126_928).abs() < 1e-4, "{v:?}");
    }

    #[test]
    fn bce_by_hand() {
        // -ln 0.8 - ln(1 - 0.4) = 0.223144 + 0.510826
        let v = vals(PreferenceLoss::Bce.forward(t(&[0.8]), t(&[0.4])));
        assert!((v[0] - 0.733_969).abs() < 1e-5, "{v:?}");
    }
}
