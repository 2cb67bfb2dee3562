//! The RGB ReFL baseline (ImageReward ReFL; VADER): the final latent decoded by the VAE and
//! scored by a pixel reward, the cost that latent methods avoid.

pub use refl_trainer::{FrameSelection, RgbRefl, RgbReflConfig, SamplingConfig};

/// RGB ReFL on shapes-world as the method comparison runs it: 4 videos per step on 20-step
/// chains (shift 3), one step with gradients at the end, every frame decoded, `L = -r`.
pub fn shapes_world() -> RgbReflConfig {
    RgbReflConfig {
        batch: 4,
        sampling: SamplingConfig {
            steps: 20,
            shift: 3.0,
        },
        window: 1,
        frames: FrameSelection::All,
        lambda: 1.0,
        shards: 2,
    }
}
