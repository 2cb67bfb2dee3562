//! The methods the [`crate::Learner`] runs, each a [`crate::Method`]:
//!
//! | method | graded latent | reward | extra terms |
//! |---|---|---|---|
//! | [`RgbRefl`] (ImageReward ReFL, VADER) | final latent, last `window` steps under gradient | VAE decode + any [`latent_reward::PixelReward`] | |
//! | [`Prfl`] ("Video Generation Models Are Good Latent Reward Models") | noisy `z_{s+K}` after a no-grad rollout to a random `s` and `K` steps with gradients | any [`latent_reward::LatentReward`] at that noise level | `lambda * relu(margin - r)`, optional KL, alternating SFT steps |
//! | [`Velr`] ("VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models") | `x0_hat` after a mid-noise window | an ensemble of latent rewards | `beta * KL`; replay buffer + online alignment |
//! | [`Grpo`] (Flow-GRPO, arXiv 2505.05470; DanceGRPO, arXiv 2505.07818) | group SDE rollouts | any [`GrpoReward`] | clipped surrogate, KL |
//! | [`Sft`] (arXiv 2604.25427, stage 1) | real latents | | flow-matching loss |

mod aligned_ensemble;
mod batch;
mod grpo;
mod kl;
mod prfl;
mod rgb_refl;
mod sft;
mod velr;

pub use self::grpo::Grpo;
pub use aligned_ensemble::{AlignedEnsemble, GrpoReward, GrpoRollouts, RankingAlignment};
pub use batch::SamplingConfig;
pub use diffusion_core::models::vae::DecoderGradient;
pub use prfl::{Prfl, PrflConfig};
pub use rgb_refl::{FrameSelection, RgbRefl, RgbReflConfig};
pub use sft::{Sft, SftConfig, SftData};
pub use velr::{Velr, VelrConfig};
