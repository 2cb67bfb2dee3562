//! The Wan2.1 video VAE (Wan Team 2025, arXiv 2503.20314), numerically matching diffusers'
//! `AutoencoderKLWan`: causal 3D convolutions, encoding and decoding chunk by chunk over frames
//! with a feature cache, as the reference does, and loading its diffusers folder.

mod checkpointed;
mod coder;
mod config;
mod layers;
mod load;
mod model;

pub use checkpointed::WanDecodeTape;
pub use coder::{DownLayer, WanDecoder, WanEncoder, WanUpBlock};
pub use config::{wan21_latents_mean, wan21_latents_std, WanVaeConfig};
pub use layers::{
    ChannelRmsNorm, ResampleMode, WanAttentionBlock, WanCausalConv3d, WanMidBlock, WanResBlock,
    WanResample,
};
pub use model::WanVae;
