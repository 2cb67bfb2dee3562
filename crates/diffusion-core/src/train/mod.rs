//! Training pieces: activation checkpointing, the flow-matching loss, gradient clipping, data-parallel gradients over batch shards, parameter noise, parameter snapshots and the precision of frozen weights.

pub mod checkpointing;
pub mod loss;
pub mod optim;
pub mod optim_config;
pub mod parallel;
pub mod param_noise;
pub mod precision;
pub mod snapshot;
