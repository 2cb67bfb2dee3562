//! Pretraining the world models on procedurally rendered videos: the VAE (reconstruction + KL),
//! then the DiT and text encoder with the flow-matching loss on frozen VAE latents.

use burn::{
    module::AutodiffModule,
    optim::{AdamWConfig, GradientsParams, Optimizer},
    tensor::{backend::AutodiffBackend, Tensor},
};
use diffusion_core::{
    io::progress::Progress,
    models::vae::VideoAutoencoder,
    sampling::rollout::randn,
    train::loss::{flow_matching_loss, TimestepSampling},
};
use rand::{rngs::StdRng, seq::IndexedRandom, Rng, SeedableRng};

use crate::{
    caption::Caption,
    error::WorldError,
    models::WorldModels,
    render::render,
    splits::{captions, Split},
};

/// Hyper-parameters of one pretraining stage.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Videos per step.
    pub batch: usize,
    /// AdamW learning rate (cosine-decayed to 10% after a 5% warm-up).
    pub lr: f64,
    /// Seed of the data stream.
    pub seed: u64,
}

/// Learning rate at `step`: linear warm-up over 5% of the steps, cosine decay to 10%.
pub fn lr_at(cfg: &StageConfig, step: usize) -> f64 {
    let warm = (cfg.steps / 20).max(1);
    if step < warm {
        return cfg.lr * (step + 1) as f64 / warm as f64;
    }
    let p = (step - warm) as f64 / (cfg.steps - warm).max(1) as f64;
    cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// A batch of rendered training videos with their captions.
///
/// # Shapes
/// - video: `[B, 3, F, H, W]` in `[-1, 1]`
pub fn video_batch<B: burn::tensor::backend::Backend>(
    models: &WorldModels<B>,
    pool: &[Caption],
    batch: usize,
    rng: &mut StdRng,
    device: &B::Device,
) -> Result<(Tensor<B, 5>, Vec<Caption>), WorldError> {
    let caps: Vec<Caption> = (0..batch)
        .map(|_| *pool.choose(rng).expect("non-empty split"))
        .collect();
    let videos = caps
        .iter()
        .map(|c| Ok(render(c, models.config.video, rng.random())?.to_tensor::<B>(device)))
        .collect::<Result<Vec<_>, WorldError>>()?;
    Ok((Tensor::stack(videos, 0), caps))
}

fn check_finite(loss: f64, step: usize) -> Result<(), WorldError> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(WorldError::InvalidConfig(format!(
            "non-finite loss at step {step}"
        )))
    }
}

/// Trains the VAE: `mse(decode(z), video) + kl_weight * KL`, `z` sampled from the posterior.
/// Returns the loss curve.
pub fn train_vae<B: AutodiffBackend>(
    models: &mut WorldModels<B>,
    cfg: StageConfig,
    kl_weight: f64,
    device: &B::Device,
) -> Result<Vec<f64>, WorldError> {
    let pool = captions(Split::Train);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.0)
        .with_epsilon(1e-8)
        .init();
    let mut pb = Progress::new(cfg.steps, "vae");
    let mut curve = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let (video, _) = video_batch(models, &pool, cfg.batch, &mut rng, device)?;
        let post = models.vae.encode(video.clone());
        let eps = randn(post.mean.dims(), &mut rng, device);
        let recon = models.vae.decode(post.sample(eps));
        let mse = (recon - video).powi_scalar(2).mean();
        let loss = mse.clone() + post.kl().mul_scalar(kl_weight);
        let value = mse.clone().into_scalar().elem::<f64>();
        check_finite(value, step)?;
        let grads = GradientsParams::from_grads(loss.backward(), &models.vae);
        models.vae = optim.step(lr_at(&cfg, step), models.vae.clone(), grads);
        curve.push(value);
        pb.tick(format!("mse {value:.4}"));
    }
    Ok(curve)
}

/// Sets the latent normalisation from the VAE's posterior means on `n` training videos.
pub fn fit_latent_stats<B: AutodiffBackend>(
    models: &mut WorldModels<B>,
    n: usize,
    seed: u64,
    device: &B::Device,
) -> Result<(), WorldError> {
    let pool = captions(Split::Train);
    let mut rng = StdRng::seed_from_u64(seed);
    let inner = models.vae.valid();
    let c = models.config.vae.latent_channels;
    let (mut sum, mut sq, mut count) = (vec![0f64; c], vec![0f64; c], 0usize);
    for _ in 0..n.div_ceil(8) {
        let (video, _) = video_batch(models, &pool, 8, &mut rng, device)?;
        let z = inner.encode(video.inner()).mean;
        let [b, _, f, h, w] = z.dims();
        let vals: Vec<f32> = crate::error::host_f32(z)?;
        let per = f * h * w;
        for bi in 0..b {
            for ci in 0..c {
                for v in &vals[(bi * c + ci) * per..(bi * c + ci + 1) * per] {
                    sum[ci] += *v as f64;
                    sq[ci] += (*v as f64).powi(2);
                }
            }
        }
        count += b * per;
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count as f64).collect();
    models.config.latent_mean = mean.iter().map(|m| *m as f32).collect();
    models.config.latent_std = sq
        .iter()
        .zip(&mean)
        .map(|(s, m)| ((s / count as f64 - m * m).max(1e-8).sqrt()) as f32)
        .collect();
    Ok(())
}

/// Normalised VAE latents of rendered training videos, encoded once so DiT training does not
/// pay for the VAE at every step.
///
/// # Shapes
/// - `latents`: `[N, C, F, H, W]`
#[derive(Debug, Clone)]
pub struct LatentCache<B: burn::tensor::backend::Backend> {
    /// Normalised posterior means.
    pub latents: Tensor<B, 5>,
    /// Captions of the videos.
    pub captions: Vec<Caption>,
}

impl<B: burn::tensor::backend::Backend> LatentCache<B> {
    /// Renders and encodes `n` videos of training captions (batches of 8).
    pub fn build(
        models: &WorldModels<B>,
        n: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self, WorldError> {
        let pool = captions(Split::Train);
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut latents, mut caps) = (Vec::new(), Vec::new());
        let mut pb = Progress::new(n.div_ceil(8), "encode");
        for _ in 0..n.div_ceil(8) {
            let (video, c) = video_batch(models, &pool, 8, &mut rng, device)?;
            latents.push(models.encode(video));
            caps.extend(c);
            pb.tick(String::new());
        }
        Ok(Self {
            latents: Tensor::cat(latents, 0),
            captions: caps,
        })
    }

    /// A random batch.
    pub fn batch(&self, size: usize, rng: &mut StdRng) -> (Tensor<B, 5>, Vec<Caption>) {
        let idx: Vec<usize> = (0..size)
            .map(|_| rng.random_range(0..self.captions.len()))
            .collect();
        let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let t = Tensor::<B, 1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(ids, [size]),
            &self.latents.device(),
        );
        (
            self.latents.clone().select(0, t),
            idx.iter().map(|&i| self.captions[i]).collect(),
        )
    }
}

/// Trains the DiT and the text encoder with the flow-matching loss on cached, normalised VAE
/// latents (logit-normal timesteps with shift 3). Returns the loss curve.
pub fn train_dit<B: AutodiffBackend>(
    models: &mut WorldModels<B>,
    cache: &LatentCache<B::InnerBackend>,
    cfg: StageConfig,
    device: &B::Device,
) -> Result<Vec<f64>, WorldError> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut opt_dit = AdamWConfig::new()
        .with_weight_decay(0.01)
        .with_epsilon(1e-8)
        .init();
    let mut opt_text = AdamWConfig::new()
        .with_weight_decay(0.01)
        .with_epsilon(1e-8)
        .init();
    let sampling = TimestepSampling::LogitNormal {
        mean: 0.0,
        std: 1.0,
        shift: 3.0,
    };
    let mut pb = Progress::new(cfg.steps, "dit");
    let mut curve = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let (x0, caps) = cache.batch(cfg.batch, &mut rng);
        let x0 = Tensor::<B, 5>::from_inner(x0);
        let eps = randn(x0.dims(), &mut rng, device);
        let sigmas = sampling.sample(cfg.batch, &mut rng);
        let text = models.embed(&caps, device)?;
        let loss = flow_matching_loss(&models.dit, x0, eps, &sigmas, 1000, text).mean();
        let value = loss.clone().into_scalar().elem::<f64>();
        check_finite(value, step)?;
        let mut grads = loss.backward();
        let g_dit = GradientsParams::from_module(&mut grads, &models.dit);
        let g_text = GradientsParams::from_module(&mut grads, &models.text);
        let lr = lr_at(&cfg, step);
        models.dit = opt_dit.step(lr, models.dit.clone(), g_dit);
        models.text = opt_text.step(lr, models.text.clone(), g_text);
        curve.push(value);
        pb.tick(format!("loss {value:.4}"));
    }
    Ok(curve)
}

use burn::tensor::ElementConversion;
