//! Pieces the examples share.

use std::path::Path;

use burn::{config::Config, tensor::backend::Backend};
use diffusion_core::checkpoint::load_record;
use latent_reward::{VelrReward, VelrRewardConfig};

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
