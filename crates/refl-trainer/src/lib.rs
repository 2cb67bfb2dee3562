#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod alignment;
pub mod config;
pub mod error;
pub mod guard;
pub mod metrics;
pub mod plot;
pub mod prompts;
pub mod trainer;

pub use alignment::{AlignmentConfig, BufferItem, OnlineAlignment};
pub use config::{
    FrameSelection, LrSchedule, Method, OptimConfig, PrflConfig, RgbReflConfig, RunConfig,
    SamplingConfig, VelrConfig,
};
pub use diffusion_core::vae::LatentNorm;
pub use error::{Result, TrainError};
pub use guard::NanGuard;
pub use metrics::{MetricsLog, StepMetrics};
pub use plot::{write_curves_png, Series};
pub use prompts::PromptSet;
pub use trainer::{heldout_reward, LatentRewards, SftData, Trainer, TrainerParts};
