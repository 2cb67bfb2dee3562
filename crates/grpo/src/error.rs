//! Errors of the GRPO crate.

/// What can go wrong in GRPO's computations.
#[derive(Debug, thiserror::Error)]
pub enum GrpoError {
    /// An input of the wrong size or an invalid setting; names what and why.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The offending input or setting.
        what: &'static str,
        /// Why it is invalid.
        why: String,
    },
    /// From the diffusion core (schedules, rollouts, models).
    #[error(transparent)]
    Core(#[from] diffusion_core::CoreError),
    /// From a reward model.
    #[error(transparent)]
    Reward(#[from] latent_reward::RewardError),
    /// The loss of a step was NaN or infinite; the update was not applied.
    #[error("non-finite GRPO loss at step {step}")]
    NonFiniteLoss {
        /// The step.
        step: usize,
    },
    /// A reward was NaN or infinite.
    #[error("reward {index} is not finite ({value})")]
    NonFiniteReward {
        /// Position in the batch.
        index: usize,
        /// The value.
        value: f32,
    },
}

/// Result with [`GrpoError`].
pub type Result<T> = std::result::Result<T, GrpoError>;

pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> GrpoError {
    GrpoError::Invalid {
        what,
        why: why.into(),
    }
}
