//! Training loops and evaluation of reward models.

use burn::{
    module::AutodiffModule,
    optim::{GradientsParams, Optimizer},
    tensor::{backend::AutodiffBackend, backend::Backend, ElementConversion, Tensor, TensorData},
};
use diffusion_core::{
    io::progress::Progress, ops::fused_adamw::FusedAdamW, sampling::rollout::randn,
    train::loss::TimestepSampling, train::optim::clip_grad_norm, train::optim_config::OptimConfig,
};
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{
    base::LatentReward,
    data::{epoch_batches, PairSet, RegressionSet},
    error::{host_f32, invalid, Result, RewardError},
    loss::{PreferenceLoss, RegressionLoss},
    metrics::{pairwise_accuracy, RegressionMetrics},
    perturb::InputPerturbation,
};

/// Optimisation settings of a reward-model training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Samples (or pairs) per step.
    pub batch: usize,
    /// AdamW with its learning-rate schedule and global gradient-norm clipping.
    pub optim: OptimConfig,
    /// Seed of the batch order and of the training noise.
    pub seed: u64,
}

impl FitConfig {
    fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch == 0 {
            return Err(invalid("steps/batch", "must be positive"));
        }
        Ok(self.optim.validate()?)
    }
}

/// What a training run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// Loss per step.
    pub losses: Vec<f64>,
    /// Global gradient norm per step, before clipping.
    pub grad_norms: Vec<f64>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// `x_sigma = (1 - sigma) x0 + sigma eps` per sample.
///
/// # Shapes
/// - `x0`, `eps`: `[B, C, F, H, W]`, `sigma`: `[B]` -> `[B, C, F, H, W]`
pub fn noisy<B: Backend>(x0: Tensor<B, 5>, eps: Tensor<B, 5>, sigma: Tensor<B, 1>) -> Tensor<B, 5> {
    let b = sigma.dims()[0];
    let s = sigma.reshape([b, 1, 1, 1, 1]);
    x0 * (s.clone().neg() + 1.0) + eps * s
}

/// `b` noise levels drawn from `noise` (`None`: all 0, clean latents).
pub(crate) fn sample_sigmas<B: Backend>(
    noise: Option<TimestepSampling>,
    b: usize,
    rng: &mut StdRng,
    device: &B::Device,
) -> Tensor<B, 1> {
    let s: Vec<f32> = match noise {
        Some(n) => n.sample(b, rng).into_iter().map(|v| v as f32).collect(),
        None => vec![0.0; b],
    };
    sigmas(s, device)
}

fn sigmas<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

fn finite(value: f64, what: &'static str, step: usize) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(RewardError::NonFinite { what, step })
    }
}

/// The loop both objectives share: `cfg.steps` AdamW steps over shuffled epochs of `n` items,
/// `loss(model, batch indices, rng)` per step, clipping, the NaN check and a progress bar.
pub(crate) fn fit<B, M, F>(
    mut model: M,
    n: usize,
    cfg: &FitConfig,
    label: &str,
    mut loss: F,
) -> Result<(M, FitReport)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    F: FnMut(&M, &[usize], &mut StdRng) -> Tensor<B, 1>,
{
    cfg.validate()?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut optim = FusedAdamW::new(cfg.optim.weight_decay).init();
    let mut report = FitReport::default();
    let mut pb = Progress::new(cfg.steps, label);
    let mut queue = Vec::new();
    for i in 0..cfg.steps {
        if queue.is_empty() {
            queue = epoch_batches(n, cfg.batch, &mut rng);
        }
        let idx = queue.pop().expect("refilled");
        let loss = loss(&model, &idx, &mut rng);
        let value = finite(loss.clone().into_scalar().elem::<f64>(), "loss", i)?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let clip = cfg.optim.grad_clip.unwrap_or(f64::INFINITY);
        let (grads, norm) = clip_grad_norm(&model, grads, clip);
        report.grad_norms.push(finite(norm, "gradient norm", i)?);
        model = optim.step(cfg.optim.lr_at(i, cfg.steps), model, grads);
        report.losses.push(value);
        pb.tick(format!("loss {value:.4}"));
    }
    report.seconds = pb.elapsed_secs();
    Ok((model, report))
}

/// Trains a reward model to regress targets on clean latents (VELR's LRM objective, "VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models",
/// section 4.1: Huber on the pixel reward). Shows a progress bar labelled `label`.
///
/// # Errors
/// `InvalidConfig` for a bad [`FitConfig`]; `NonFinite` when a loss or gradient norm is NaN or
/// infinite (the model of the failed step is not returned).
pub fn fit_regression<B, M>(
    model: M,
    data: &RegressionSet<B>,
    loss_fn: RegressionLoss,
    cfg: &FitConfig,
    label: &str,
) -> Result<(M, FitReport)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + LatentReward<B>,
{
    fit_noisy_regression(model, data, loss_fn, None, cfg, label)
}

/// [`fit_regression`] on noisy latents: each sample is noised to its own `sigma ~ noise`
/// (`x_sigma = (1 - sigma) x0 + sigma eps`) and the model regresses the clean sample's target
/// at that noise level, so it learns the reward a partly denoised latent will reach: a process
/// reward (PRFL "Video Generation Models Are Good Latent Reward Models", section 3.2) trained by VELR's regression objective ("VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models",
/// section 4.1). `noise = None` is [`fit_regression`].
///
/// # Errors
/// As [`fit_regression`].
pub fn fit_noisy_regression<B, M>(
    model: M,
    data: &RegressionSet<B>,
    loss_fn: RegressionLoss,
    noise: Option<TimestepSampling>,
    cfg: &FitConfig,
    label: &str,
) -> Result<(M, FitReport)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + LatentReward<B>,
{
    let device = data.latents.device();
    fit(model, data.len(), cfg, label, |model, idx, rng| {
        let batch = data.batch(idx);
        let sigma = sample_sigmas::<B>(noise, idx.len(), rng, &device);
        let latents = match noise {
            Some(_) => {
                let eps = randn(batch.latents.dims(), rng, &device);
                noisy(batch.latents, eps, sigma.clone())
            }
            None => batch.latents,
        };
        let pred = model.score(latents, sigma, batch.text);
        loss_fn.forward(pred, batch.targets).mean()
    })
}

/// Trains a reward model on preference pairs at random noise levels (PRFL "Video Generation Models Are Good Latent Reward Models",
/// section 3.2): both latents of a pair get the same `sigma ~ noise` and the same `eps`, then
/// `loss_fn` compares the two scores (after `perturb`, e.g. adversarial steps that make the
/// model harder to exploit). `noise = None` trains on clean latents.
///
/// # Errors
/// As [`fit_regression`].
pub fn fit_preference<B, M>(
    model: M,
    pairs: &PairSet<B>,
    loss_fn: PreferenceLoss,
    noise: Option<TimestepSampling>,
    perturb: InputPerturbation,
    cfg: &FitConfig,
    label: &str,
) -> Result<(M, FitReport)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + LatentReward<B>,
{
    let device = pairs.winners.device();
    fit(model, pairs.len(), cfg, label, |model, idx, rng| {
        let batch = pairs.batch(idx);
        let sigma = sample_sigmas::<B>(noise, idx.len(), rng, &device);
        let (w, l) = noised_pair(&batch, sigma.clone(), rng);
        perturb.loss(model, loss_fn, w, l, sigma, batch.text)
    })
}

/// Both latents of each pair noised to `sigma` with the same `eps` (drawn from `rng`).
fn noised_pair<B: Backend>(
    batch: &crate::data::PairBatch<B>,
    sigma: Tensor<B, 1>,
    rng: &mut StdRng,
) -> (Tensor<B, 5>, Tensor<B, 5>) {
    let eps = randn(batch.winners.dims(), rng, &batch.winners.device());
    (
        noisy(batch.winners.clone(), eps.clone(), sigma.clone()),
        noisy(batch.losers.clone(), eps, sigma),
    )
}

/// Scores of both latents of each pair after noising them to `sigma` with the same `eps`
/// (drawn from `rng`), as PRFL trains and evaluates its reward model.
///
/// # Shapes
/// - `sigma`: `[B]` -> (`winner scores`, `loser scores`): `[B]` each
fn score_noised_pair<B: Backend, M: LatentReward<B>>(
    model: &M,
    batch: crate::data::PairBatch<B>,
    sigma: Tensor<B, 1>,
    rng: &mut StdRng,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let (w, l) = noised_pair(&batch, sigma.clone(), rng);
    (
        model.score(w, sigma.clone(), batch.text.clone()),
        model.score(l, sigma, batch.text),
    )
}

/// Scores of every sample of a set on clean latents, in batches of `batch`.
pub fn predict<B: Backend, M: LatentReward<B>>(
    model: &M,
    data: &RegressionSet<B>,
    batch: usize,
) -> Result<Vec<f32>> {
    predict_at(model, data, 0.0, 0, batch)
}

/// Scores of every sample of a set noised to `sigma` (`eps` drawn from `seed`; `sigma = 0`:
/// the clean latents), in batches of `batch`.
pub fn predict_at<B: Backend, M: LatentReward<B>>(
    model: &M,
    data: &RegressionSet<B>,
    sigma: f64,
    seed: u64,
    batch: usize,
) -> Result<Vec<f32>> {
    let device = data.latents.device();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(data.len());
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let b = data.batch(chunk);
        model.check_input(b.latents.dims(), b.text.dims())?;
        let s = sigmas::<B>(vec![sigma as f32; chunk.len()], &device);
        let latents = if sigma == 0.0 {
            b.latents
        } else {
            let eps = randn(b.latents.dims(), &mut rng, &device);
            noisy(b.latents, eps, s.clone())
        };
        out.extend(host_f32(model.score(latents, s, b.text))?);
    }
    Ok(out)
}

/// MSE and Pearson correlation of a model's scores against a set's targets.
pub fn evaluate_regression<B: Backend, M: LatentReward<B>>(
    model: &M,
    data: &RegressionSet<B>,
    batch: usize,
) -> Result<RegressionMetrics> {
    evaluate_regression_at(model, data, 0.0, 0, batch)
}

/// [`evaluate_regression`] on the set's latents noised to `sigma` (as [`predict_at`]): how well
/// a process reward predicts the clean sample's target from a noisy latent.
pub fn evaluate_regression_at<B: Backend, M: LatentReward<B>>(
    model: &M,
    data: &RegressionSet<B>,
    sigma: f64,
    seed: u64,
    batch: usize,
) -> Result<RegressionMetrics> {
    Ok(RegressionMetrics::of(
        &predict_at(model, data, sigma, seed, batch)?,
        &data.targets,
    ))
}

/// Pairwise accuracy at one noise level `sigma` (both latents of a pair share `eps`, drawn from
/// `seed`): the fraction of pairs whose winner scores higher.
pub fn evaluate_pairs<B: Backend, M: LatentReward<B>>(
    model: &M,
    pairs: &PairSet<B>,
    sigma: f64,
    seed: u64,
    batch: usize,
) -> Result<f64> {
    let device = pairs.winners.device();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut win, mut lose) = (Vec::new(), Vec::new());
    let idx: Vec<usize> = (0..pairs.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let b = pairs.batch(chunk);
        model.check_input(b.winners.dims(), b.text.dims())?;
        let s = sigmas::<B>(vec![sigma as f32; chunk.len()], &device);
        let (w, l) = score_noised_pair(model, b, s, &mut rng);
        win.extend(host_f32(w)?);
        lose.extend(host_f32(l)?);
    }
    Ok(pairwise_accuracy(&win, &lose))
}
