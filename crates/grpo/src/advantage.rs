//! Group-relative advantages (GRPO; Flow-GRPO arXiv 2505.05470, DanceGRPO).

use serde::{Deserialize, Serialize};

use crate::error::{invalid, GrpoError, Result};

/// Over which samples the reward standard deviation is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdScope {
    /// Each group's own std (GRPO, Flow-GRPO).
    Group,
    /// One std over the whole batch (DanceGRPO's option; robust when a group's rewards are
    /// nearly equal).
    Global,
}

/// How rewards become advantages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvantageConfig {
    /// Scope of the std normalisation.
    pub std: StdScope,
    /// Added to the std (Flow-GRPO: 1e-4).
    pub eps: f64,
    /// Advantages are clipped to `[-clip, clip]` (Flow-GRPO: 5); `None`: no clipping.
    pub clip: Option<f64>,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        Self {
            std: StdScope::Group,
            eps: 1e-4,
            clip: Some(5.0),
        }
    }
}

fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// `A_i = (R_i - mean_group(R)) / (std + eps)`, clipped, for rewards laid out group after group
/// (`rewards[g * group .. (g + 1) * group]` are the `group` rollouts of prompt `g`). The mean is
/// always the group's own, so the advantages of every group sum to zero (before clipping).
/// The std is the population std (PyTorch `std(unbiased=False)`).
///
/// # Errors
/// `Invalid` when `group < 2`, the batch is not a whole number of groups, or the settings are
/// negative; `NonFiniteReward` on a NaN or infinite reward.
pub fn group_advantages(rewards: &[f32], group: usize, cfg: &AdvantageConfig) -> Result<Vec<f32>> {
    if group < 2 || rewards.is_empty() || rewards.len() % group != 0 {
        return Err(invalid(
            "group",
            format!(
                "{} rewards are not whole groups of {group} (need group >= 2)",
                rewards.len()
            ),
        ));
    }
    if !(cfg.eps >= 0.0) || cfg.clip.is_some_and(|c| !(c > 0.0)) {
        return Err(invalid("advantage config", "eps must be >= 0 and clip > 0"));
    }
    if let Some((index, &value)) = rewards.iter().enumerate().find(|(_, r)| !r.is_finite()) {
        return Err(GrpoError::NonFiniteReward { index, value });
    }
    let r: Vec<f64> = rewards.iter().map(|&x| x as f64).collect();
    let global_std = mean_std(&r).1;
    let mut out = Vec::with_capacity(r.len());
    for g in r.chunks(group) {
        let (mean, std) = mean_std(g);
        let std = match cfg.std {
            StdScope::Group => std,
            StdScope::Global => global_std,
        };
        let denom = std + cfg.eps;
        for &x in g {
            // a group of equal rewards carries no signal: zero advantage, even with eps = 0
            let a = if denom > 0.0 { (x - mean) / denom } else { 0.0 };
            let a = cfg.clip.map_or(a, |c| a.clamp(-c, c));
            out.push(a as f32);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_group() {
        // group [1, 3]: mean 2, std 1 -> (-1, 1) / (1 + eps)
        let cfg = AdvantageConfig {
            eps: 0.0,
            ..Default::default()
        };
        let a = group_advantages(&[1.0, 3.0, 5.0, 5.0], 2, &cfg).unwrap();
        assert_eq!(a, vec![-1.0, 1.0, 0.0, 0.0]);
        // global std of [1, 3, 5, 5] = sqrt(2.75)
        let g = AdvantageConfig {
            std: StdScope::Global,
            eps: 0.0,
            clip: None,
        };
        let a = group_advantages(&[1.0, 3.0, 5.0, 5.0], 2, &g).unwrap();
        let s = 2.75f32.sqrt();
        assert!((a[0] + 1.0 / s).abs() < 1e-6 && (a[1] - 1.0 / s).abs() < 1e-6);
        // clipping
        let c = AdvantageConfig {
            std: StdScope::Global,
            eps: 0.0,
            clip: Some(0.5),
        };
        assert_eq!(
            group_advantages(&[1.0, 3.0], 2, &c).unwrap(),
            vec![-0.5, 0.5]
        );
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let cfg = AdvantageConfig::default();
        assert!(group_advantages(&[1.0, 2.0, 3.0], 2, &cfg).is_err());
        assert!(group_advantages(&[1.0, 2.0], 1, &cfg).is_err());
        assert!(matches!(
            group_advantages(&[1.0, f32::NAN], 2, &cfg),
            Err(GrpoError::NonFiniteReward { index: 1, .. })
        ));
    }
}
