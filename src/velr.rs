#![doc = include_str!("../docs/guide/velr.md")]

pub use ensemble::{Aggregation, Ensemble};
pub use latent_reward::{VelrReward, VelrRewardConfig};
pub use refl_trainer::{AlignmentConfig, OnlineAlignment, SamplingConfig, Velr, VelrConfig};

/// VELR on shapes-world as the method comparison runs it: 4 videos per step on 20-step chains
/// (shift 3), the window's start in steps 6-9 with 2 steps of gradients, KL weight 1, the
/// members' mean, a buffer of 64 labelled every step, 4 alignment steps every 10 steps at 1e-5.
pub fn shapes_world() -> VelrConfig {
    VelrConfig {
        batch: 4,
        sampling: SamplingConfig {
            steps: 20,
            shift: 3.0,
        },
        start: [6, 10],
        window: 2,
        kl_beta: 1.0,
        aggregation: Aggregation::Mean,
        buffer: 64,
        label_every: 1,
        align_every: 10,
        align_steps: 4,
        align_lr: 1e-5,
        shards: 2,
    }
}
