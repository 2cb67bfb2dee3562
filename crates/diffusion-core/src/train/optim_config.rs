//! The optimiser settings every training loop shares (the learner's methods, reward-model
//! fitting): AdamW with PyTorch's betas and epsilon, a learning-rate schedule and global
//! gradient-norm clipping.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Constant rate.
    Constant,
    /// Linear warm-up over `warmup` steps, then constant.
    Warmup {
        /// Warm-up steps.
        warmup: usize,
    },
    /// Linear warm-up, then cosine decay to `min_ratio * lr` at the last step.
    Cosine {
        /// Warm-up steps.
        warmup: usize,
        /// Final rate as a fraction of the peak.
        min_ratio: f64,
    },
}

impl LrSchedule {
    /// The rate at `step` of `total` for a peak rate `lr`.
    pub fn at(&self, lr: f64, step: usize, total: usize) -> f64 {
        let warm = |w: usize| {
            if step < w {
                lr * (step + 1) as f64 / w as f64
            } else {
                lr
            }
        };
        match *self {
            Self::Constant => lr,
            Self::Warmup { warmup } => warm(warmup),
            Self::Cosine { warmup, min_ratio } => {
                if step < warmup {
                    return warm(warmup);
                }
                let p = (step - warmup) as f64 / (total.saturating_sub(warmup + 1)).max(1) as f64;
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos());
                lr * (min_ratio + (1.0 - min_ratio) * cos)
            }
        }
    }
}

/// Optimiser settings (AdamW with PyTorch's betas and epsilon), one for every method and for
/// reward-model fitting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (PRFL release: 1.0).
    pub grad_clip: Option<f64>,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
}

impl Default for OptimConfig {
    /// The PRFL release's policy optimiser ("Video Generation Models Are Good Latent Reward
    /// Models"): AdamW at 5e-6, weight decay 0.01, global clip 1.0, constant rate.
    fn default() -> Self {
        Self {
            lr: 5e-6,
            weight_decay: 0.01,
            grad_clip: Some(1.0),
            schedule: LrSchedule::Constant,
        }
    }
}

/// The largest learning rate accepted: a rate above it moves an AdamW weight by more than 10
/// per step, which no fine-tuning run means.
pub const MAX_LR: f64 = 10.0;

impl OptimConfig {
    /// A constant learning rate `lr` with `weight_decay` and clipping at `grad_clip`.
    pub fn constant(lr: f64, weight_decay: f64, grad_clip: Option<f64>) -> Self {
        Self {
            lr,
            weight_decay,
            grad_clip,
            schedule: LrSchedule::Constant,
        }
    }

    /// The learning rate at `step` of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        self.schedule.at(self.lr, step, total)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// `InvalidConfig` naming the first bad field (`lr`, `weight_decay`, `grad_clip`,
    /// `schedule.min_ratio`).
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr <= MAX_LR) {
            return Err(invalid(
                "lr",
                format!("{} must be in (0, {MAX_LR}]", self.lr),
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(invalid(
                "weight_decay",
                format!("{} must be finite and >= 0", self.weight_decay),
            ));
        }
        if let Some(c) = self.grad_clip {
            if !(c > 0.0 && c.is_finite()) {
                return Err(invalid("grad_clip", format!("{c} must be finite and > 0")));
            }
        }
        if let LrSchedule::Cosine { min_ratio, .. } = self.schedule {
            if !(0.0..=1.0).contains(&min_ratio) {
                return Err(invalid("schedule.min_ratio", "must be in [0, 1]"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_by_hand() {
        assert_eq!(LrSchedule::Warmup { warmup: 4 }.at(1.0, 0, 10), 0.25);
        assert_eq!(LrSchedule::Warmup { warmup: 4 }.at(1.0, 4, 10), 1.0);
        let c = LrSchedule::Cosine {
            warmup: 0,
            min_ratio: 0.1,
        };
        assert!((c.at(1.0, 0, 11) - 1.0).abs() < 1e-12);
        assert!((c.at(1.0, 5, 11) - 0.55).abs() < 1e-12);
        assert!((c.at(1.0, 10, 11) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn absurd_values_name_the_field() {
        let ok = OptimConfig::default();
        assert!(ok.validate().is_ok());
        for (bad, field) in [
            (
                OptimConfig {
                    lr: 1e30,
                    ..ok.clone()
                },
                "`lr`",
            ),
            (
                OptimConfig {
                    lr: f64::NAN,
                    ..ok.clone()
                },
                "`lr`",
            ),
            (
                OptimConfig {
                    weight_decay: f64::INFINITY,
                    ..ok.clone()
                },
                "`weight_decay`",
            ),
            (
                OptimConfig {
                    grad_clip: Some(0.0),
                    ..ok.clone()
                },
                "`grad_clip`",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
