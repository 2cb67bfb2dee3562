//! Pieces the examples share (each example uses some of them).
#![allow(dead_code)]

use std::path::Path;

use burn::{
    config::Config,
    tensor::backend::{AutodiffBackend, Backend},
};
use diffusion_core::{checkpoint::load_record, FlowGrpoSde, WanTransformer};
use grpo::{AdvantageConfig, GrpoConfig, Sde, TimestepSelection};
use latent_reward::{ProcessReward, ProcessRewardConfig, VelrReward, VelrRewardConfig};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use refl_trainer::SftData;
use shapes_world::{captions, Caption, RewardData, Split, WorldError, WorldModels};

/// The first `n` VELR ensemble members that the `train_rewards` example saved in `dir`
/// (`velr.json`, `velr_0.mpk`, ...).
pub fn load_velr_members<Bk: Backend>(
    dir: &Path,
    n: usize,
    device: &Bk::Device,
) -> Result<Vec<VelrReward<Bk>>, String> {
    let hint = |what: &dyn std::fmt::Display, e: &dyn std::fmt::Display| {
        format!("cannot load {what} (run the train_rewards example): {e}")
    };
    let cfg = VelrRewardConfig::load(dir.join("velr.json"))
        .map_err(|e| hint(&dir.join("velr.json").display(), &e))?;
    (0..n)
        .map(|i| {
            let path = dir.join(format!("velr_{i}.mpk"));
            let member = cfg.init::<Bk>(device).map_err(|e| e.to_string())?;
            load_record(member, &path, device).map_err(|e| hint(&path.display(), &e))
        })
        .collect()
}

/// The first `n` captions of `split` after a shuffle with `seed` (the examples' prompt sets:
/// seed 1 for training prompts, 2 for held-out test prompts).
pub fn shuffled_captions(split: Split, seed: u64, n: usize) -> Vec<Caption> {
    let mut caps = captions(split);
    caps.shuffle(&mut StdRng::seed_from_u64(seed));
    caps.truncate(n);
    caps
}

/// Real latents of rendered videos of `caps` with their prompts' embeddings: PRFL's SFT data.
pub fn sft_data<Bk: Backend>(
    models: &WorldModels<Bk>,
    caps: &[Caption],
    device: &Bk::Device,
) -> Result<SftData<Bk>, WorldError> {
    let real = RewardData::real(models, caps, caps, 3, device)?.regression_set(models, device)?;
    Ok(SftData {
        latents: real.latents,
        text: real.text,
    })
}

/// The process reward model that `train_rewards` saved in `dir` (`prm.json`, `prm.mpk`), built
/// on `dit` with its embeddings frozen.
pub fn load_prm<Bk: AutodiffBackend>(
    dit: &WanTransformer<Bk>,
    dir: &Path,
    device: &Bk::Device,
) -> Result<ProcessReward<Bk>, String> {
    let hint = |what: &dyn std::fmt::Display, e: &dyn std::fmt::Display| {
        format!("cannot load {what} (run the train_rewards example): {e}")
    };
    let cfg = ProcessRewardConfig::load(dir.join("prm.json"))
        .map_err(|e| hint(&dir.join("prm.json").display(), &e))?;
    let prm = cfg.init(dit, device).map_err(|e| e.to_string())?;
    let path = dir.join("prm.mpk");
    Ok(load_record(prm, &path, device)
        .map_err(|e| hint(&path.display(), &e))?
        .freeze_embeddings())
}

/// The GRPO settings of the examples: 4 Flow-GRPO SDE rollouts per prompt over 20 steps
/// (shift 3), 30% of the steps trained, clip 0.2, KL weight 0.01, AdamW at `lr`.
pub fn grpo_config(lr: f64) -> GrpoConfig {
    GrpoConfig {
        group: 4,
        steps: 20,
        shift: 3.0,
        sde: Sde::FlowGrpo(FlowGrpoSde::default()),
        shared_noise: false,
        advantage: AdvantageConfig::default(),
        clip: 0.2,
        kl_beta: 0.01,
        timesteps: TimestepSelection::RandomFraction {
            fraction: 0.3,
            skip_last: 1,
        },
        rectify: false,
        lr,
        weight_decay: 0.01,
        grad_clip: Some(1.0),
        seed: 0,
    }
}
