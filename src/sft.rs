#![doc = include_str!("../docs/guide/sft.md")]

pub use refl_trainer::{Sft, SftConfig, SftData};
