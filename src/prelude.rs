//! What most programs need: the learner and its config, the methods and their configs, the
//! traits a model or a reward implements, and the shapes-world set-up.

pub use crate::{grpo, prfl, rgb_refl, sft, velr, world, world::World};
pub use diffusion_core::{
    backend::DefaultBackend, models::vae::VideoAutoencoder, VelocityModel, WanConfig,
    WanTransformer,
};
pub use ensemble::{Aggregation, Ensemble};
pub use latent_reward::{LatentReward, PixelReward};
pub use refl_trainer::{
    Evaluate, GuardConfig, HeldoutReward, Learner, LearnerConfig, LrSchedule, Method, OptimConfig,
    Policy, PromptSet, StepMetrics,
};
pub use refl_trainer::{
    FrameSelection, Grpo, Prfl, PrflConfig, RgbRefl, RgbReflConfig, SamplingConfig, Sft, SftConfig,
    SftData, Velr, VelrConfig,
};
