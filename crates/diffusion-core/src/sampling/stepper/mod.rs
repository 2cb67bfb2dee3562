//! Steppers: one transition `x(sigma) -> x(sigma_next)` of the reverse process, with the mean,
//! standard deviation and Gaussian log-probability that GRPO needs.

mod base;
mod dance_grpo;
mod euler;
mod flow_grpo;
mod guidance;

pub use base::{gaussian_log_prob, LogProbReduction, StepOutput, Stepper, Transition};
pub use dance_grpo::DanceGrpoSde;
pub use euler::EulerOde;
pub use flow_grpo::FlowGrpoSde;
pub use guidance::Guidance;
