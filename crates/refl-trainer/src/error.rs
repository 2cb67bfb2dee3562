//! Errors of `refl-trainer`.

use std::path::PathBuf;

/// Failures of runs: bad configs, diverged training, IO.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A run configuration that cannot work.
    #[error("invalid config `{field}`: {reason}")]
    Config {
        /// Dotted path of the offending field (`method.prfl.window`).
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A config file that does not parse.
    #[error("{path}: {reason}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        reason: String,
    },
    /// Too many rejected steps (non-finite loss, gradient or weights, or an update above the
    /// bound).
    #[error(
        "stopped at step {step}: {skipped} steps were rejected (limit {limit}); the last: {last}"
    )]
    Diverged {
        /// Step at which the run stopped.
        step: usize,
        /// Steps rejected so far.
        skipped: usize,
        /// The configured limit.
        limit: usize,
        /// Why the last step was rejected.
        last: String,
    },
    /// A checkpoint that does not match the run (wrong config, missing file).
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Errors of the diffusion core (shapes, IO, weights).
    #[error(transparent)]
    Core(#[from] diffusion_core::CoreError),
    /// Errors of reward models.
    #[error(transparent)]
    Reward(#[from] latent_reward::RewardError),
    /// Errors of GRPO's computations.
    #[error(transparent)]
    Grpo(#[from] grpo::GrpoError),
    /// Errors of the replay buffer.
    #[error(transparent)]
    Buffer(#[from] replay_buffer::BufferError),
    /// IO errors of logs.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Result of trainer operations.
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn config_error(field: impl Into<String>, reason: impl Into<String>) -> TrainError {
    TrainError::Config {
        field: field.into(),
        reason: reason.into(),
    }
}
