#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod alignment;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod evaluation;
pub mod guard;
pub mod learner;
pub mod method;
pub mod methods;
pub mod metrics;
pub mod plot;
pub mod policy;
pub mod prompt_file;
pub mod prompts;

pub use alignment::{AlignmentConfig, BufferItem, OnlineAlignment};
pub use checkpoint::{CheckpointReader, CheckpointWriter};
pub use config::load_config;
pub use diffusion_core::models::vae::LatentNorm;
pub use diffusion_core::train::optim_config::{LrSchedule, OptimConfig, MAX_LR};
pub use error::{Result, TrainError};
pub use evaluation::{heldout_reward, Evaluate, HeldoutReward};
pub use guard::{Guard, GuardConfig, Rejection};
pub use learner::{Learner, LearnerConfig};
pub use method::{Method, StepReport};
pub use methods::{
    AlignedEnsemble, DecoderGradient, FrameSelection, Grpo, GrpoReward, GrpoRollouts, Prfl,
    PrflConfig, RankingAlignment, RgbRefl, RgbReflConfig, SamplingConfig, Sft, SftConfig, SftData,
    Velr, VelrConfig,
};
pub use metrics::{MetricsLog, StepMetrics};
pub use plot::{write_curves_png, write_metrics_png, Series};
pub use policy::{Policy, PolicyOptimizer, Update};
pub use prompt_file::PromptFile;
pub use prompts::PromptSet;
