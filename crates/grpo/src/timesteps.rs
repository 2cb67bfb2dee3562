//! Which denoising steps GRPO trains on, and Flash-GRPO's temporal gradient rectification.

use rand::{seq::index::sample, Rng};
use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};
use diffusion_core::FlowGrpoSde;

/// The steps of a rollout whose log-probs enter the loss. The policy is re-evaluated at one
/// selected step at a time, so memory stays that of one step whatever the selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TimestepSelection {
    /// Every SDE step (Flow-GRPO).
    All,
    /// A random fraction of the steps, never the last `skip_last` (DanceGRPO: 0.6, 1).
    RandomFraction {
        /// Fraction of the eligible steps, in `(0, 1]`.
        fraction: f64,
        /// Final steps never trained.
        skip_last: usize,
    },
    /// Flash-GRPO's iso-temporal selection: one step, shared by every member of a group, is
    /// the SDE step (trained); the others are ODE steps.
    IsoTemporal {
        /// Final steps never chosen.
        skip_last: usize,
    },
}

impl TimestepSelection {
    /// The selected steps of a `steps`-step rollout, ascending.
    ///
    /// # Errors
    /// `Invalid` when no step is eligible or the fraction is outside `(0, 1]`.
    pub fn select<R: Rng>(&self, steps: usize, rng: &mut R) -> Result<Vec<usize>> {
        let eligible = |skip: usize| {
            steps
                .checked_sub(skip)
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("skip_last", format!("{skip} leaves none of {steps} steps")))
        };
        match *self {
            Self::All => eligible(0).map(|n| (0..n).collect()),
            Self::RandomFraction {
                fraction,
                skip_last,
            } => {
                if !(fraction > 0.0 && fraction <= 1.0) {
                    return Err(invalid("fraction", format!("{fraction} is not in (0, 1]")));
                }
                let n = eligible(skip_last)?;
                let k = ((n as f64 * fraction).round() as usize).clamp(1, n);
                let mut picked = sample(rng, n, k).into_vec();
                picked.sort_unstable();
                Ok(picked)
            }
            Self::IsoTemporal { skip_last } => {
                let n = eligible(skip_last)?;
                Ok(vec![rng.random_range(0..n)])
            }
        }
    }
}

/// Flash-GRPO's temporal gradient rectification: the weight of each selected step,
/// `c(t) = sqrt(-dt) / s + s sqrt(-dt) (1 - sigma) / (2 sigma)` with `dt = sigma_{t+1} - sigma_t`
/// and `s` the SDE's diffusion coefficient at `t`, divided by the mean over `steps`, so that
/// steps with very different noise levels contribute comparable gradients.
///
/// # Errors
/// `Invalid` when a step has no successor in `sigmas`, or `sigma_t` is not in `(0, 1]`.
pub fn rectification(sde: &FlowGrpoSde, sigmas: &[f64], steps: &[usize]) -> Result<Vec<f64>> {
    if steps.is_empty() {
        return Err(invalid("steps", "no step selected"));
    }
    let raw = steps
        .iter()
        .map(|&t| {
            let (&sigma, &next) = sigmas
                .get(t)
                .zip(sigmas.get(t + 1))
                .ok_or_else(|| invalid("steps", format!("step {t} needs sigmas[{}]", t + 1)))?;
            if !(sigma > 0.0 && sigma <= 1.0 && next < sigma) {
                return Err(invalid(
                    "sigmas",
                    format!(
                        "step {t}: sigma {sigma} -> {next} is not a decreasing level in (0, 1]"
                    ),
                ));
            }
            let h = (sigma - next).sqrt();
            let s = sde.diffusion(sigma, next);
            Ok(h / s + s * h * (1.0 - sigma) / (2.0 * sigma))
        })
        .collect::<Result<Vec<f64>>>()?;
    let mean = raw.iter().sum::<f64>() / raw.len() as f64;
    Ok(raw.into_iter().map(|c| c / mean).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn selections() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            TimestepSelection::All.select(4, &mut rng).unwrap(),
            vec![0, 1, 2, 3]
        );
        let f = TimestepSelection::RandomFraction {
            fraction: 0.6,
            skip_last: 1,
        };
        for _ in 0..20 {
            let s = f.select(11, &mut rng).unwrap();
            assert_eq!(s.len(), 6); // 0.6 of the 10 eligible steps
            assert!(s.windows(2).all(|w| w[0] < w[1]) && *s.last().unwrap() < 10);
        }
        let iso = TimestepSelection::IsoTemporal { skip_last: 2 };
        let s = iso.select(5, &mut rng).unwrap();
        assert!(s.len() == 1 && s[0] < 3);
        assert!(iso.select(2, &mut rng).is_err());
        let bad = TimestepSelection::RandomFraction {
            fraction: 0.0,
            skip_last: 0,
        };
        assert!(bad.select(4, &mut rng).is_err());
    }

    #[test]
    fn rectification_by_hand() {
        // a = 1, sigma 0.5 -> 0.25: s = sqrt(0.5 / 0.5) = 1, h = 0.5, c = 0.5 + 0.5 * 0.5 / 1 = 0.75
        // sigma 0.25 -> 0: s = sqrt(0.25 / 0.75), h = 0.5
        let sde = FlowGrpoSde {
            noise_level: 1.0,
            ..Default::default()
        };
        let sigmas = [0.5, 0.25, 0.0];
        let s2 = (1.0f64 / 3.0).sqrt();
        let c2 = 0.5 / s2 + s2 * 0.5 * 0.75 / 0.5;
        let w = rectification(&sde, &sigmas, &[0, 1]).unwrap();
        let mean = (0.75 + c2) / 2.0;
        assert!((w[0] - 0.75 / mean).abs() < 1e-12 && (w[1] - c2 / mean).abs() < 1e-12);
        assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-12);
        assert!(rectification(&sde, &sigmas, &[2]).is_err());
        assert!(rectification(&sde, &sigmas, &[]).is_err());
    }
}
