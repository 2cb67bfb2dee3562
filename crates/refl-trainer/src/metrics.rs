//! Per-step metrics and the JSONL log they are written to.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// What one training step measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Step index (0-based).
    pub step: usize,
    /// Total loss of the step (`None` when the step was skipped as non-finite).
    pub loss: Option<f64>,
    /// Mean latent reward of the step's samples.
    pub latent_reward: Option<f64>,
    /// KL term (VELR).
    pub kl: Option<f64>,
    /// SFT loss, when an SFT step ran (PRFL).
    pub sft_loss: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: Option<f64>,
    /// Learning rate used.
    pub lr: f64,
    /// Mean pixel-oracle reward on held-out prompts, on evaluation steps.
    pub heldout_reward: Option<f64>,
    /// Ensemble variance of the step's samples (VELR).
    pub uncertainty: Option<f64>,
    /// Wall time of the step in seconds (evaluation excluded).
    pub step_seconds: f64,
    /// Peak memory of the step in bytes (device pool or heap, whichever the backend reports).
    pub peak_bytes: Option<u64>,
    /// Steps the guard rejected so far.
    pub skipped: usize,
    /// Further values a method reports (GRPO's clip fraction, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, f64>,
}

/// Appends one JSON object per line to `metrics.jsonl`, flushed per step so a crash loses at
/// most the step in flight.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens (appending to) a log file.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // a record torn by a crash is dropped (its step is redone after a resume), so the next
        // record starts a line of its own
        let text = std::fs::read(path).map_err(io)?;
        if text.last().is_some_and(|c| *c != b'\n') {
            let keep = text.iter().rposition(|c| *c == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64).map_err(io)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends a record (one `write` call, so a crash tears at most this line).
    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        let mut line = serde_json::to_string(m).map_err(|e| TrainError::ConfigFile {
            path: self.path.clone(),
            reason: format!("step {}: {e}", m.step),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads every record of a log, keeping the last record of each step (a resumed run
    /// rewrites the steps after its checkpoint). A torn last line (a crash mid-write) is
    /// skipped with a warning on stderr.
    pub fn read(path: &Path) -> Result<Vec<StepMetrics>> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut out: Vec<StepMetrics> = Vec::new();
        let torn = !text.is_empty() && !text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let m: StepMetrics = match serde_json::from_str(line) {
                Ok(m) => m,
                Err(_) if torn && i + 1 == lines.len() => {
                    eprintln!(
                        "warning: {}: skipped a torn last line {} (a crash mid-write)",
                        path.display(),
                        i + 1
                    );
                    break;
                }
                Err(e) => {
                    return Err(TrainError::ConfigFile {
                        path: path.to_path_buf(),
                        reason: format!("line {}: {e}", i + 1),
                    })
                }
            };
            out.retain(|o| o.step < m.step);
            out.push(m);
        }
        Ok(out)
    }
}
