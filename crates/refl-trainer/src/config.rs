//! Run configurations: one [`RunConfig`] for every method, loadable from TOML or JSON and
//! validated with errors that name the field.

use std::path::{Path, PathBuf};

use ensemble::Aggregation;
use serde::{Deserialize, Serialize};

use crate::error::{config_error, Result, TrainError};

/// Which frames of the decoded video the RGB ReFL baseline scores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameSelection {
    /// Every frame (the full-cost baseline).
    All,
    /// Only the first latent frame, decoded alone (the memory-saving compromise).
    First,
}

/// The RGB ReFL baseline (ImageReward ReFL; VADER): gradient window at the end of the chain,
/// `x0_hat` decoded by the VAE, pixel reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RgbReflConfig {
    /// Steps with gradients at the end of the sampled chain (ImageReward: one step drawn from
    /// the last quarter).
    pub window: usize,
    /// Frames decoded and scored.
    pub frames: FrameSelection,
    /// Loss weight: `L = -lambda * r`.
    pub lambda: f64,
}

/// PRFL (seed 001): no-grad rollout to a random step `s`, `window` steps with gradients,
/// process reward on the noisy latent at its timestep, `lambda * relu(margin - r)`,
/// alternating with SFT flow-matching steps on real latents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrflConfig {
    /// Range `[a, b)` of the step `s` where the gradient window starts; `None`: the release's
    /// `[0, S - K)`. Leaving out the first, near-pure-noise steps keeps the policy away from
    /// where a process reward model is at chance and its gradient arbitrary.
    #[serde(default)]
    pub start: Option<[usize; 2]>,
    /// Steps with gradients (`K >= 1`; the release uses 1).
    pub window: usize,
    /// Loss weight (release: 0.1).
    pub lambda: f64,
    /// Hinge margin of `relu(margin - r)` (release: 2, so the loss never saturates for a
    /// sigmoid reward).
    pub margin: f64,
    /// An SFT step every this many reward steps (0: none; release: every step).
    pub sft_every: usize,
    /// Weight of a KL term to the initial model at the graded latent, as VELR's (0: none, the
    /// release; the term costs one more forward of the policy and of the initial model).
    #[serde(default)]
    pub kl_beta: f64,
}

/// VELR (seed 002): truncated mid-step ReFL with an ensemble latent reward, KL to the initial
/// model, and online alignment of the ensemble from a variance-prioritised replay buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VelrConfig {
    /// Range of start steps (inclusive, exclusive) of the gradient window, in the mid-noise
    /// regime (paper: 15..25 of 50).
    pub start: [usize; 2],
    /// Steps with gradients before jumping to `x0_hat` (paper: truncation 10 of 50).
    pub window: usize,
    /// Weight of the KL term to the initial model (paper: 10).
    pub kl_beta: f64,
    /// Aggregation of the ensemble's member scores.
    pub aggregation: Aggregation,
    /// Replay buffer capacity (paper: 256).
    pub buffer: usize,
    /// Label the graded latents with the pixel reward (a no-grad decode) and push them to the
    /// buffer every this many steps (0: never). Labelling every step dominates a step's time at
    /// Wan-like decoder widths; every few steps amortises it.
    #[serde(default = "one")]
    pub label_every: usize,
    /// Fine-tune the ensemble every this many steps (0: never; the buffer still fills).
    pub align_every: usize,
    /// Gradient steps of each alignment round.
    pub align_steps: usize,
    /// Learning rate of the alignment (paper: 1e-5).
    pub align_lr: f64,
}

fn one() -> usize {
    1
}

/// The method and its own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// RGB ReFL baseline.
    RgbRefl(RgbReflConfig),
    /// Process reward feedback learning.
    Prfl(PrflConfig),
    /// Ensemble latent rewards (VELR).
    Velr(VelrConfig),
}

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

/// Optimiser settings (AdamW with PyTorch's betas and epsilon).
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

/// Sampler of the rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Denoising steps (PRFL release: 40).
    pub steps: usize,
    /// Timestep shift (PRFL release: 5).
    pub shift: f64,
}

/// A complete training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The method.
    pub method: Method,
    /// Optimiser steps.
    pub steps: usize,
    /// Prompts (videos) per step.
    pub batch: usize,
    /// Sampler.
    pub sampling: SamplingConfig,
    /// Optimiser.
    pub optim: OptimConfig,
    /// Steps with a non-finite loss or gradient are skipped; the run aborts after this many.
    pub max_skipped: usize,
    /// Seed of prompts, noise and windows (per step, so a resumed run draws the same).
    pub seed: u64,
    /// Evaluate the held-out reward every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Folder of checkpoints and the metrics log (`metrics.jsonl`).
    pub out: PathBuf,
    /// Batch shards whose forward and backward run side by side on their own threads
    /// (`diffusion_core::parallel::sharded_grads`; at most the batch). 1: one graph on the
    /// calling thread. The gradients are the same up to float rounding; on the CPU, one shard per
    /// core roughly halves a step on two cores.
    #[serde(default = "one")]
    pub shards: usize,
}

impl RunConfig {
    /// Reads a config from a `.toml` or `.json` file and validates it.
    ///
    /// # Errors
    /// `ConfigFile` with the parser's message when the file does not parse; `Config` naming the
    /// field when a value cannot work.
    pub fn load(path: &Path) -> Result<Self> {
        let file_error = |reason: String| TrainError::ConfigFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let cfg: Self = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| file_error(e.to_string()))?,
            Some("json") => serde_json::from_str(&text).map_err(|e| file_error(e.to_string()))?,
            other => {
                return Err(file_error(format!(
                    "unknown config format {other:?}: use .toml or .json"
                )))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value, naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(config_error(field, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        let finite_pos = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(config_error(
                    field,
                    format!("{v} must be a positive number"),
                ))
            }
        };
        positive("steps", self.steps)?;
        positive("batch", self.batch)?;
        positive("shards", self.shards)?;
        positive("sampling.steps", self.sampling.steps)?;
        finite_pos("sampling.shift", self.sampling.shift)?;
        finite_pos("optim.lr", self.optim.lr)?;
        if !(self.optim.weight_decay >= 0.0) {
            return Err(config_error("optim.weight_decay", "must be >= 0"));
        }
        if let Some(c) = self.optim.grad_clip {
            finite_pos("optim.grad_clip", c)?;
        }
        if let LrSchedule::Cosine { min_ratio, .. } = self.optim.schedule {
            if !(0.0..=1.0).contains(&min_ratio) {
                return Err(config_error(
                    "optim.schedule.min_ratio",
                    "must be in [0, 1]",
                ));
            }
        }
        let s = self.sampling.steps;
        match &self.method {
            Method::RgbRefl(m) => {
                if m.window == 0 || m.window > s {
                    return Err(config_error(
                        "method.rgb_refl.window",
                        format!("{} not in 1..={s}", m.window),
                    ));
                }
                finite_pos("method.rgb_refl.lambda", m.lambda)?;
            }
            Method::Prfl(m) => {
                // s is drawn from [0, S - 1 - K]: the window must leave at least one step
                if m.window == 0 || m.window >= s {
                    return Err(config_error(
                        "method.prfl.window",
                        format!("{} not in 1..{s}", m.window),
                    ));
                }
                if let Some([a, b]) = m.start {
                    if a >= b || b + m.window > s {
                        return Err(config_error(
                            "method.prfl.start",
                            format!(
                                "[{a}, {b}) plus a window of {} must fit {s} steps",
                                m.window
                            ),
                        ));
                    }
                }
                finite_pos("method.prfl.lambda", m.lambda)?;
                finite_pos("method.prfl.margin", m.margin)?;
                if !(m.kl_beta >= 0.0 && m.kl_beta.is_finite()) {
                    return Err(config_error(
                        "method.prfl.kl_beta",
                        "must be >= 0 and finite",
                    ));
                }
            }
            Method::Velr(m) => {
                let [a, b] = m.start;
                if a >= b || b > s {
                    return Err(config_error(
                        "method.velr.start",
                        format!("[{a}, {b}) must be a non-empty part of 0..{s}"),
                    ));
                }
                if m.window == 0 || b - 1 + m.window > s {
                    return Err(config_error(
                        "method.velr.window",
                        format!(
                            "{} steps from a start below {b} overrun {s} steps",
                            m.window
                        ),
                    ));
                }
                if !(m.kl_beta >= 0.0) {
                    return Err(config_error("method.velr.kl_beta", "must be >= 0"));
                }
                positive("method.velr.buffer", m.buffer)?;
                if m.align_every > 0 {
                    if m.label_every == 0 {
                        return Err(config_error(
                            "method.velr.label_every",
                            "alignment needs labelled samples: must be >= 1 when align_every > 0",
                        ));
                    }
                    positive("method.velr.align_steps", m.align_steps)?;
                    finite_pos("method.velr.align_lr", m.align_lr)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn prfl() -> RunConfig {
        RunConfig {
            method: Method::Prfl(PrflConfig {
                start: None,
                window: 1,
                lambda: 0.1,
                margin: 2.0,
                sft_every: 1,
                kl_beta: 0.0,
            }),
            steps: 10,
            batch: 2,
            sampling: SamplingConfig {
                steps: 8,
                shift: 3.0,
            },
            optim: OptimConfig {
                lr: 1e-4,
                weight_decay: 0.01,
                grad_clip: Some(1.0),
                schedule: LrSchedule::Constant,
            },
            max_skipped: 3,
            seed: 0,
            eval_every: 5,
            checkpoint_every: 5,
            out: "out/run".into(),
            shards: 1,
        }
    }

    #[test]
    fn toml_and_json_round_trip() {
        let cfg = prfl();
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().join("cfg.toml");
        std::fs::write(&t, toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(RunConfig::load(&t).unwrap(), cfg);
        let j = tmp.path().join("cfg.json");
        std::fs::write(&j, serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(RunConfig::load(&j).unwrap(), cfg);
        std::fs::write(&t, "steps = 'ten'").unwrap();
        let err = RunConfig::load(&t).unwrap_err().to_string();
        assert!(err.contains("steps") || err.contains("line"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut cfg = prfl();
        cfg.method = Method::Prfl(PrflConfig {
            start: None,
            window: 8,
            lambda: 0.1,
            margin: 2.0,
            sft_every: 0,
            kl_beta: 0.0,
        });
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("method.prfl.window"), "{err}");
        if let Method::Prfl(p) = &mut cfg.method {
            (p.window, p.start) = (1, Some([5, 3]));
        }
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("method.prfl.start"), "{err}");
        if let Method::Prfl(p) = &mut cfg.method {
            (p.start, p.kl_beta) = (None, -1.0);
        }
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("method.prfl.kl_beta"), "{err}");
        let mut cfg = prfl();
        cfg.optim.lr = f64::NAN;
        assert!(cfg.validate().unwrap_err().to_string().contains("optim.lr"));
        let mut cfg = prfl();
        cfg.shards = 0;
        assert!(cfg.validate().unwrap_err().to_string().contains("shards"));
        let mut cfg = prfl();
        cfg.method = Method::Velr(VelrConfig {
            start: [3, 6],
            window: 4,
            kl_beta: 10.0,
            aggregation: Aggregation::Mean,
            buffer: 16,
            label_every: 1,
            align_every: 2,
            align_steps: 4,
            align_lr: 1e-5,
        });
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("method.velr.window"));
        if let Method::Velr(v) = &mut cfg.method {
            (v.window, v.label_every) = (1, 0);
        }
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("method.velr.label_every"), "{err}");
    }

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
}
