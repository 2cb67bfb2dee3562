//! How an ensemble's member scores become one reward.

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// Aggregation of member scores `[N, B]` into `[B]` (VELR "VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models", section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Aggregation {
    /// Mean over members.
    Mean,
    /// Most pessimistic member (guards against a member the policy has learned to exploit).
    Min,
    /// Most optimistic member.
    Max,
    /// `mean - k * std`: a lower confidence bound that penalises uncertain samples. The std is
    /// `sqrt(var + 1e-12) - 1e-6`, which is 0 where the members agree and keeps a finite gradient
    /// there (the plain square root's is infinite at 0).
    LowerConfidenceBound {
        /// Number of standard deviations subtracted.
        k: f64,
    },
}

/// Offset in the lower confidence bound's square root.
const STD_EPS: f64 = 1e-6;

impl Aggregation {
    /// Aggregates member scores.
    ///
    /// # Shapes
    /// - `scores`: `[N, B]` -> `[B]`
    pub fn apply<B: Backend>(&self, scores: Tensor<B, 2>) -> Tensor<B, 1> {
        let [_, b] = scores.dims();
        match *self {
            Self::Mean => scores.mean_dim(0).reshape([b]),
            Self::Min => scores.min_dim(0).reshape([b]),
            Self::Max => scores.max_dim(0).reshape([b]),
            Self::LowerConfidenceBound { k } => {
                let mean = scores.clone().mean_dim(0);
                let std = variance(scores)
                    .add_scalar(STD_EPS * STD_EPS)
                    .sqrt()
                    .sub_scalar(STD_EPS)
                    .reshape([1, b]);
                (mean - std.mul_scalar(k)).reshape([b])
            }
        }
    }
}

/// Population variance across members.
///
/// # Shapes
/// - `scores`: `[N, B]` -> `[B]`
pub fn variance<B: Backend>(scores: Tensor<B, 2>) -> Tensor<B, 1> {
    let [_, b] = scores.dims();
    let mean = scores.clone().mean_dim(0);
    (scores - mean).powi_scalar(2).mean_dim(0).reshape([b])
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use diffusion_core::backend::DefaultBackend as B;

    use super::*;

    fn scores() -> Tensor<B, 2> {
        // members x samples: sample 0 gets (1, 2, 3), sample 1 gets (0, 0, 6)
        Tensor::from_data(
            TensorData::new(vec![1.0f32, 0.0, 2.0, 0.0, 3.0, 6.0], [3, 2]),
            &Default::default(),
        )
    }

    fn vals(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn by_hand() {
        assert_eq!(vals(Aggregation::Mean.apply(scores())), vec![2.0, 2.0]);
        assert_eq!(vals(Aggregation::Min.apply(scores())), vec![1.0, 0.0]);
        assert_eq!(vals(Aggregation::Max.apply(scores())), vec![3.0, 6.0]);
        // variances 2/3 and 8
        let v = vals(variance(scores()));
        assert!((v[0] - 2.0 / 3.0).abs() < 1e-6 && (v[1] - 8.0).abs() < 1e-5);
        let lcb = vals(Aggregation::LowerConfidenceBound { k: 1.0 }.apply(scores()));
        assert!((lcb[0] - (2.0 - (2.0f32 / 3.0).sqrt())).abs() < 1e-5);
        assert!((lcb[1] - (2.0 - 8f32.sqrt())).abs() < 1e-5);
    }

    /// Members that agree: the bound is their score, and its gradient is the mean's (1/N per
    /// member), not NaN.
    #[test]
    fn lower_confidence_bound_has_a_gradient_where_members_agree() {
        type AD = burn::backend::Autodiff<B>;
        let x = Tensor::<AD, 2>::from_data(
            TensorData::new(vec![0.5f32, 0.5], [2, 1]),
            &Default::default(),
        )
        .require_grad();
        let lcb = Aggregation::LowerConfidenceBound { k: 1.0 }.apply(x.clone());
        assert!((lcb.clone().into_scalar() - 0.5).abs() < 1e-6);
        let g: Vec<f32> = x
            .grad(&lcb.sum().backward())
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(g, vec![0.5, 0.5]);
    }
}
