//! # latent-refl
//!
//! Post-training of video diffusion models with reward feedback in latent space, on burn
//! (CUDA, wgpu, CPU). This crate is the front door: it re-exports the workspace's crates, a
//! [`prelude`], and one module per method, each with its config (`Default` = the paper's
//! settings) and named presets:
//!
//! | module | method |
//! |---|---|
//! | [`prfl`] | process reward feedback learning ("Video Generation Models Are Good Latent Reward Models") |
//! | [`velr`] | ensemble latent rewards with online alignment ("VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models") |
//! | [`grpo`] | GRPO for flow models (Flow-GRPO, arXiv 2505.05470; DanceGRPO, arXiv 2505.07818) |
//! | [`rgb_refl`] | the RGB ReFL baseline (ImageReward ReFL, VADER) |
//! | [`sft`] | supervised fine-tuning with the flow-matching loss (arXiv 2604.25427, stage 1) |
//!
//! Every method runs in one [`refl_trainer::Learner`], which owns the optimiser, the guard,
//! metrics, evaluation, checkpoints and resume. [`world`] sets up the synthetic shapes-world
//! on which the examples train on a CPU in minutes; [`wan`] runs any method on Wan2.1 folders
//! from one TOML config.
//!
//! ```no_run
//! use latent_refl::prelude::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! type AD = burn::backend::Autodiff<DefaultBackend>;
//! let world = World::<AD>::load("assets/shapes-world".as_ref(), &Default::default())?;
//! let members = world::load_velr_members(world::REWARDS.as_ref(), "velr", 5, &Default::default())?;
//! let reward = world::denoised_velr(&world.models_ad.dit, members, 1.0)?;
//! let prfl = Prfl::new(prfl::shapes_world(), reward, world.train_prompts(512)?, world.latent_shape(), None)?;
//! let mut learner = Learner::new(world::learner_config(240, 1e-4, "out/prfl"), world.models_ad.dit.clone(), prfl)?
//!     .with_evaluator(world.heldout_reward(32)?);
//! learner.run()?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub use diffusion_core;
pub use ensemble;
pub use latent_reward;
pub use refl_trainer;
pub use replay_buffer;
pub use shapes_world;

pub mod grpo;
pub mod guide;
pub mod plan;
pub mod prelude;
pub mod prfl;
pub mod rgb_refl;
pub mod sft;
pub mod velr;
pub mod wan;
pub mod world;
