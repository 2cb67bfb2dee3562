//! Supervised fine-tuning with the flow-matching loss on real latents (the post-train
//! framework's first stage, arXiv 2604.25427).

pub use refl_trainer::{Sft, SftConfig, SftData};
