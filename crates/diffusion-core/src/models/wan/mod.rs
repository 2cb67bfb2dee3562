//! A burn implementation of the Wan2.1 text-to-video transformer (Wan Team 2025,
//! arXiv 2503.20314), numerically matching diffusers' `WanTransformer3DModel` (text-to-video
//! variant, no image conditioning) and loading its safetensors weights.

mod attention;
mod block;
pub mod checkpoint;
mod config;
mod embeddings;
mod load;
mod lora;
mod rope;
mod transformer;

pub use attention::WanAttention;
pub use block::WanBlock;
pub use config::WanConfig;
pub use embeddings::{timestep_sinusoid, WanConditionEmbedder};
pub use lora::LORA_WEIGHTS;
pub use rope::RopeTable;
pub use transformer::WanTransformer;
