//! Noise schedules: the sequence of noise levels a sampler walks from noise to data.

mod base;
mod flow_match;
mod vp;

pub use base::Schedule;
pub use flow_match::{shift_sigma, unshift_sigma, FlowMatchScheduleConfig};
pub use vp::{VpBetas, VpScheduleConfig};
