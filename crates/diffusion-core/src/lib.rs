#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod backend;
pub mod error;
pub mod io;
pub mod models;
pub mod ops;
pub mod plan;
pub mod sampling;
pub mod train;

pub use error::{CoreError, Result};
pub use models::{
    model::VelocityModel,
    prompt::PromptEnhancer,
    wan::{WanConfig, WanTransformer},
};
pub use sampling::{
    rollout::{Conditioning, GradWindow, Rollout, Trajectory},
    schedule::{FlowMatchScheduleConfig, Schedule, VpScheduleConfig},
    stepper::{DanceGrpoSde, EulerOde, FlowGrpoSde, Guidance, LogProbReduction, Stepper},
};
