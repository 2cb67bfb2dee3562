//! Video autoencoders: the `VideoAutoencoder` trait and a small causal 3D-conv VAE with Wan's
//! `1 + 4k` frame layout.

mod base;
mod blocks;
mod causal;
mod checkpointed;
mod norm;

pub use base::{LatentDist, VideoAutoencoder};
pub use blocks::{CausalConv3d, FrameGroupNorm, ResBlock3d, TemporalDown, TemporalUp};
pub use causal::{CausalVae, CausalVaeConfig};
pub(crate) use checkpointed::{dot, grad_or_zeros, leaf};
pub use checkpointed::{CheckpointedDecoder, DecoderGradient};
pub use norm::LatentNorm;
