#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod activation;
pub mod attention;
pub mod backend;
pub mod checkpoint;
mod cpu_math;
mod dispatch;
pub mod error;
mod flex_node;
pub mod fused_adamw;
pub mod linear;
pub mod loss;
pub mod model;
pub mod modulation;
pub mod optim;
pub mod parallel;
pub mod param_noise;
pub mod probe;
pub mod progress;
pub mod prompt;
pub mod rollout;
pub mod rotary;
pub mod schedule;
pub mod snapshot;
pub mod stepper;
pub mod text;
pub mod vae;
pub mod wan;

pub use error::{CoreError, Result};
pub use model::VelocityModel;
pub use prompt::PromptEnhancer;
pub use rollout::{Conditioning, GradWindow, Rollout, Trajectory};
pub use schedule::{FlowMatchScheduleConfig, Schedule, VpScheduleConfig};
pub use stepper::{DanceGrpoSde, EulerOde, FlowGrpoSde, Guidance, LogProbReduction, Stepper};
pub use wan::{WanConfig, WanTransformer};
