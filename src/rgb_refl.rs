#![doc = include_str!("../docs/guide/rgb_refl.md")]

pub use refl_trainer::{DecoderGradient, FrameSelection, RgbRefl, RgbReflConfig, SamplingConfig};

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
        decoder_gradient: DecoderGradient::Graph,
        lambda: 1.0,
        shards: 2,
    }
}
