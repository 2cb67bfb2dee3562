#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod advantage;
pub mod error;
pub mod loss;
pub mod reward;
pub mod step;
pub mod timesteps;

pub use advantage::{group_advantages, AdvantageConfig, StdScope};
pub use error::{GrpoError, Result};
pub use loss::{clipped_surrogate, transition_kl};
pub use reward::{GroupReward, LatentScore, PixelScore};
pub use step::{grpo_gradients, GrpoConfig, GrpoGradients, GrpoStats, Sde};
pub use timesteps::{rectification, TimestepSelection};
