//! Training the members of an ensemble.

use burn::{module::AutodiffModule, tensor::backend::AutodiffBackend};
use latent_reward::{
    fit_noisy_regression, FitConfig, FitReport, LatentReward, RegressionLoss, RegressionSet,
    TimestepSampling,
};
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::Ensemble;

/// What data each member trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bootstrap {
    /// Every member sees the whole set (diversity from initialisation and batch order only).
    None,
    /// Each member trains on its own resample of `N` samples drawn with replacement.
    Resample,
}

/// Trains `n` members independently with [`fit_member`] (members `0..n`). Returns the ensemble
/// and each member's report.
///
/// # Errors
/// Whatever `init` or a member's training returns (a NaN loss names its step).
pub fn fit_members<B, M, F>(
    n: usize,
    mut init: F,
    data: &RegressionSet<B>,
    loss: RegressionLoss,
    noise: Option<TimestepSampling>,
    cfg: &FitConfig,
    bootstrap: Bootstrap,
) -> latent_reward::Result<(Ensemble<M>, Vec<FitReport>)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + LatentReward<B>,
    F: FnMut(u64) -> latent_reward::Result<M>,
{
    let mut members = Vec::with_capacity(n);
    let mut reports = Vec::with_capacity(n);
    for i in 0..n {
        let (m, r) = fit_member(i, &mut init, data, loss, noise, cfg, bootstrap)?;
        members.push(m);
        reports.push(r);
    }
    Ok((Ensemble::new(members)?, reports))
}

/// Trains member `i` of an ensemble on its own: it is built by `init(cfg.seed + i)` (after
/// seeding the backend's generator with the same number, so initialisations differ and are
/// reproducible) and trained with `fit_noisy_regression` (clean latents for `noise = None`, VELR;
/// noisy latents at `sigma ~ noise` for a process-aware ensemble) using seed `cfg.seed + i` for
/// its batch order, its noise (and its bootstrap resample). Training members one at a time
/// lets a caller save each as it finishes and resume a long run; the result equals member `i`
/// of [`fit_members`].
///
/// # Errors
/// Whatever `init` or the training returns (a NaN loss names its step).
pub fn fit_member<B, M, F>(
    i: usize,
    init: F,
    data: &RegressionSet<B>,
    loss: RegressionLoss,
    noise: Option<TimestepSampling>,
    cfg: &FitConfig,
    bootstrap: Bootstrap,
) -> latent_reward::Result<(M, FitReport)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + LatentReward<B>,
    F: FnOnce(u64) -> latent_reward::Result<M>,
{
    let seed = cfg.seed.wrapping_add(i as u64);
    let member_cfg = FitConfig {
        seed,
        ..cfg.clone()
    };
    let resampled;
    let set = match bootstrap {
        Bootstrap::None => data,
        Bootstrap::Resample => {
            resampled = data.bootstrap(&mut StdRng::seed_from_u64(seed ^ 0xB007));
            &resampled
        }
    };
    B::seed(&data.latents.device(), seed);
    fit_noisy_regression(
        init(seed)?,
        set,
        loss,
        noise,
        &member_cfg,
        &format!("member {}", i + 1),
    )
}
