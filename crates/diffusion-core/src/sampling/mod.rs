//! Sampling: noise schedules, steppers (ODE and SDE with log-probs, guidance) and the denoising chain with its gradient window.

pub mod rollout;
pub mod schedule;
pub mod stepper;
pub mod unipc;
