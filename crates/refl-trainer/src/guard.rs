//! The guard of training steps: a step is applied only when its loss and gradient norm are
//! finite and the weights it produces are finite and moved by a bounded relative amount.

use std::collections::HashMap;

use burn::{
    module::{Module, ModuleVisitor, Param, ParamId},
    tensor::{backend::AutodiffBackend, Tensor},
};
use serde::{Deserialize, Serialize};

use crate::error::{config_error, Result, TrainError};

/// What the guard tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Rejected steps tolerated; the run stops with [`TrainError::Diverged`] past this.
    pub max_rejected: usize,
    /// Largest accepted relative update of the trainable weights, `||w' - w|| / ||w||`
    /// (`None`: no bound). A fine-tuning step moves the weights by a small fraction of their
    /// norm (about `lr / rms(w)`, 1e-3 in the quickstart); a step that moves them by as much as
    /// their norm is a blow-up.
    pub max_update_ratio: Option<f64>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            max_rejected: 10,
            max_update_ratio: Some(1.0),
        }
    }
}

impl GuardConfig {
    /// Checks the bound.
    ///
    /// # Errors
    /// `Config` naming `guard.max_update_ratio` when it is not a positive number.
    pub fn validate(&self) -> Result<()> {
        match self.max_update_ratio {
            Some(r) if !(r > 0.0 && r.is_finite()) => Err(config_error(
                "guard.max_update_ratio",
                format!("{r} must be finite and > 0"),
            )),
            _ => Ok(()),
        }
    }
}

/// Why a step was rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// The loss or the gradient norm was not finite.
    NonFiniteLoss,
    /// The updated weights held a non-finite value (or values so large that their squares
    /// overflow).
    NonFiniteWeights,
    /// The update moved the weights by more than the bound.
    UpdateTooLarge {
        /// `||w' - w|| / ||w||`.
        ratio: f64,
        /// The bound.
        bound: f64,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NonFiniteLoss => write!(f, "non-finite loss or gradient"),
            Self::NonFiniteWeights => write!(f, "non-finite updated weights"),
            Self::UpdateTooLarge { ratio, bound } => {
                write!(f, "relative update {ratio:.3e} above the bound {bound}")
            }
        }
    }
}

/// Counts rejected steps; the run stops once more than `max_rejected` were rejected. A
/// rejected step leaves the parameters as they were, so no checkpoint
/// ever holds its values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    /// Steps rejected so far.
    pub rejected: usize,
    /// The settings.
    pub config: GuardConfig,
}

impl Guard {
    /// A guard with nothing rejected yet.
    pub fn new(config: GuardConfig) -> Self {
        Self {
            rejected: 0,
            config,
        }
    }

    /// Whether the step's loss and gradient norm allow an update.
    pub fn values_ok(values: &[f64]) -> std::result::Result<(), Rejection> {
        if values.iter().all(|v| v.is_finite()) {
            Ok(())
        } else {
            Err(Rejection::NonFiniteLoss)
        }
    }

    /// Whether the weights `after` may replace `before` (trainable parameters only).
    pub fn weights_ok<B: AutodiffBackend, M: Module<B>>(
        &self,
        before: &M,
        after: &M,
    ) -> std::result::Result<(), Rejection> {
        let [after_sq, delta_sq, before_sq] = update_norms(before, after);
        if !(after_sq.is_finite() && delta_sq.is_finite()) {
            return Err(Rejection::NonFiniteWeights);
        }
        if let Some(bound) = self.config.max_update_ratio {
            let ratio = (delta_sq / before_sq.max(f64::MIN_POSITIVE)).sqrt();
            // all-zero trainable weights (a fresh adapter) have no scale to compare with
            if before_sq > 0.0 && ratio > bound {
                return Err(Rejection::UpdateTooLarge { ratio, bound });
            }
        }
        Ok(())
    }

    /// Counts a rejected step.
    ///
    /// # Errors
    /// `Diverged` once more than `max_rejected` steps were rejected.
    pub fn reject(&mut self, step: usize, why: &Rejection) -> Result<()> {
        self.rejected += 1;
        if self.rejected > self.config.max_rejected {
            return Err(TrainError::Diverged {
                step,
                skipped: self.rejected,
                limit: self.config.max_rejected,
                last: why.to_string(),
            });
        }
        Ok(())
    }
}

/// `[||after||^2, ||after - before||^2, ||before||^2]` over the trainable float parameters,
/// summed on the device (outside the autodiff graph) and read back once.
fn update_norms<B: AutodiffBackend, M: Module<B>>(before: &M, after: &M) -> [f64; 3] {
    type Inner<B> = <B as AutodiffBackend>::InnerBackend;
    struct Collect<B: AutodiffBackend>(HashMap<ParamId, Tensor<Inner<B>, 1>>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            if p.is_require_grad() {
                let n = p.shape().num_elements();
                self.0.insert(p.id, p.val().inner().reshape([n]));
            }
        }
    }
    struct Sums<B: AutodiffBackend> {
        before: HashMap<ParamId, Tensor<Inner<B>, 1>>,
        sums: Option<Tensor<Inner<B>, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Sums<B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let Some(old) = self.before.get(&p.id) else {
                return;
            };
            let n = p.shape().num_elements();
            let new = p.val().inner().reshape([n]);
            let parts = Tensor::cat(
                vec![
                    new.clone().powi_scalar(2).sum(),
                    (new - old.clone()).powi_scalar(2).sum(),
                    old.clone().powi_scalar(2).sum(),
                ],
                0,
            );
            self.sums = Some(match self.sums.take() {
                Some(s) => s + parts,
                None => parts,
            });
        }
    }
    let mut collect = Collect(HashMap::new());
    before.visit(&mut collect);
    let mut sums = Sums {
        before: collect.0,
        sums: None,
    };
    after.visit(&mut sums);
    let Some(s) = sums.sums else {
        return [0.0; 3];
    };
    match s.into_data().convert::<f64>().to_vec::<f64>() {
        Ok(v) if v.len() == 3 => [v[0], v[1], v[2]],
        _ => [f64::NAN; 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::{backend::Autodiff, module::Module, nn::LinearConfig};
    use diffusion_core::backend::DefaultBackend as B;

    #[test]
    fn rejects_then_stops() {
        let mut g = Guard::new(GuardConfig {
            max_rejected: 1,
            max_update_ratio: None,
        });
        assert!(Guard::values_ok(&[1.0, 2.0]).is_ok());
        assert_eq!(Guard::values_ok(&[f64::NAN]), Err(Rejection::NonFiniteLoss));
        g.reject(1, &Rejection::NonFiniteLoss).unwrap();
        assert_eq!(g.rejected, 1);
        assert!(matches!(
            g.reject(2, &Rejection::NonFiniteWeights),
            Err(TrainError::Diverged {
                step: 2,
                skipped: 2,
                limit: 1,
                ..
            })
        ));
    }

    #[test]
    fn weights_by_hand() {
        let dev = Default::default();
        let lin = LinearConfig::new(2, 2)
            .with_bias(false)
            .init::<Autodiff<B>>(&dev);
        let w = |v: [[f32; 2]; 2]| {
            let mut l = lin.clone();
            l.weight = l.weight.map(|_| Tensor::from_data(v, &dev).require_grad());
            l
        };
        let before = w([[3.0, 0.0], [0.0, 4.0]]); // norm 5
        let g = Guard::new(GuardConfig {
            max_rejected: 0,
            max_update_ratio: Some(0.5),
        });
        // moved by norm 2: ratio 0.4
        assert!(g.weights_ok(&before, &w([[3.0, 2.0], [0.0, 4.0]])).is_ok());
        // moved by norm 3: ratio 0.6
        match g.weights_ok(&before, &w([[3.0, 3.0], [0.0, 4.0]])) {
            Err(Rejection::UpdateTooLarge { ratio, bound }) => {
                assert!((ratio - 0.6).abs() < 1e-9 && bound == 0.5, "{ratio}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            g.weights_ok(&before, &w([[f32::NAN, 0.0], [0.0, 4.0]])),
            Err(Rejection::NonFiniteWeights)
        );
        // frozen parameters are not compared
        let frozen = before.clone().no_grad();
        assert!(g
            .weights_ok(&frozen, &w([[300.0, 0.0], [0.0, 4.0]]).no_grad())
            .is_ok());
    }
}
