#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod base;
pub mod data;
pub mod denoised;
pub mod error;
pub mod gradient_match;
pub mod input_filter;
pub mod loss;
pub mod metrics;
pub mod mlp;
pub mod perturb;
pub mod process;
pub mod query_pool;
pub mod res_block;
pub mod train;
pub mod velr;

pub use base::{LatentReward, PixelReward, RewardRange};
pub use data::{PairBatch, PairSet, RegressionBatch, RegressionSet};
pub use denoised::DenoisedReward;
/// The noise-level distributions of noisy-latent training ([`fit_preference`],
/// [`fit_noisy_regression`]).
pub use diffusion_core::train::loss::TimestepSampling;
pub use diffusion_core::train::optim_config::{LrSchedule, OptimConfig};
pub use error::{Result, RewardError};
pub use gradient_match::{
    fit_gradient_match, gradient_cosine, gradient_match_loss, GradientBatch, GradientMatchConfig,
    GradientSet, ProbeDirections,
};
pub use input_filter::InputFilter;
pub use loss::{PreferenceLoss, RegressionLoss};
pub use metrics::{mse, pairwise_accuracy, pearson, RegressionMetrics};
pub use mlp::{MlpReward, MlpRewardConfig};
pub use perturb::InputPerturbation;
pub use process::{Pooling, ProcessReward, ProcessRewardConfig};
pub use train::{
    evaluate_pairs, evaluate_regression, evaluate_regression_at, fit_noisy_regression,
    fit_preference, fit_regression, predict, predict_at, FitConfig, FitReport,
};
pub use velr::{NoiseInput, TextFusion, TextKeys, VelrReward, VelrRewardConfig};
