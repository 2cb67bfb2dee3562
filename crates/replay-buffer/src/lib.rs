#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod base;
pub mod error;
pub mod fifo;
pub mod persist;
pub mod prioritised;
pub mod reservoir;

pub use base::{Insertion, ReplayBuffer};
pub use error::BufferError;
pub use fifo::FifoBuffer;
pub use persist::{load, save};
pub use prioritised::PrioritisedBuffer;
pub use reservoir::ReservoirBuffer;
