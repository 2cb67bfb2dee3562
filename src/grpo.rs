#![doc = include_str!("../docs/guide/grpo.md")]

pub use ::grpo::*;
pub use refl_trainer::{AlignedEnsemble, Grpo, GrpoReward, GrpoRollouts, RankingAlignment};

use diffusion_core::{DanceGrpoSde, FlowGrpoSde};

/// Flow-GRPO's settings: [`GrpoConfig::default`].
pub fn flow_grpo() -> GrpoConfig {
    GrpoConfig::default()
}

/// DanceGRPO's settings (arXiv 2505.07818): its SDE, a group's rollouts from one shared noise,
/// 60% of the steps trained (never the last), global advantage std, clip 1e-4, no KL term.
pub fn dance_grpo() -> GrpoConfig {
    GrpoConfig {
        sde: Sde::DanceGrpo(DanceGrpoSde::default()),
        shared_noise: true,
        timesteps: TimestepSelection::RandomFraction {
            fraction: 0.6,
            skip_last: 1,
        },
        advantage: AdvantageConfig {
            std: StdScope::Global,
            ..AdvantageConfig::default()
        },
        kl_beta: 0.0,
        ..GrpoConfig::default()
    }
}

/// The recipe that raises the held-out reward on shapes-world: 4 prompts x 8 Flow-GRPO
/// rollouts of 10 steps (shift 3) from one shared noise per group, Flash-GRPO's iso-temporal
/// selection (one SDE step per update, trained, the others ODE) with temporal rectification,
/// per-group advantages, clip 0.2, KL weight 0.01, two shards.
pub fn iso_temporal() -> GrpoConfig {
    GrpoConfig {
        prompts: 4,
        group: 8,
        steps: 10,
        shift: 3.0,
        sde: Sde::FlowGrpo(FlowGrpoSde::default()),
        shared_noise: true,
        advantage: AdvantageConfig::default(),
        clip: 0.2,
        kl_beta: 0.01,
        timesteps: TimestepSelection::IsoTemporal { skip_last: 1 },
        rectify: true,
        shards: 2,
    }
}
