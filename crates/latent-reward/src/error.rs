//! Errors of `latent-reward`.

use diffusion_core::CoreError;

/// Failures of reward models, their data and their training.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// A configuration value that cannot work.
    #[error("invalid config `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// Tensors or data of the wrong shape.
    #[error("shape mismatch for {what}: expected {expected:?}, found {found:?}")]
    Shape {
        /// What was checked.
        what: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Supplied shape.
        found: Vec<usize>,
    },
    /// A loss or score that is NaN or infinite.
    #[error("non-finite {what} at step {step}")]
    NonFinite {
        /// What was not finite.
        what: &'static str,
        /// Training step.
        step: usize,
    },
    /// A pixel-space reward failed.
    #[error("pixel reward: {0}")]
    Pixel(Box<dyn std::error::Error + Send + Sync>),
    /// Errors from `diffusion-core` (checkpoints, IO, model shapes).
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Result of reward-model operations.
pub type Result<T> = std::result::Result<T, RewardError>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> RewardError {
    RewardError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

/// The values of a tensor as `f32`s on the host.
pub fn host_f32<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| invalid("tensor data", format!("{e:?}")))
}
