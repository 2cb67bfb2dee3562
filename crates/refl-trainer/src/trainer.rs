//! The training loop shared by the RGB ReFL baseline, PRFL and VELR.

use std::{path::PathBuf, time::Instant};

use burn::{
    module::{AutodiffModule, Module},
    optim::{adaptor::OptimizerAdaptor, GradientsParams, Optimizer},
    record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder},
    tensor::{
        activation,
        backend::{AutodiffBackend, Backend},
        ElementConversion, Tensor,
    },
};
use diffusion_core::{
    checkpoint::{load_record, save_record, write_atomic},
    fused_adamw::FusedAdamW,
    loss::{flow_matching_loss, TimestepSampling},
    optim::clip_grad_norm,
    parallel::{cores, parallel_map, shard_rows, sharded_grads},
    probe::{device_reserved_bytes, HeapProbe},
    progress::Progress,
    rollout::{predict_x0, randn, step_rng},
    vae::VideoAutoencoder,
    Conditioning, EulerOde, FlowMatchScheduleConfig, GradWindow, Rollout, Schedule, VelocityModel,
    WanTransformer,
};
use ensemble::Ensemble;
use latent_reward::{DenoisedReward, LatentReward, PixelReward, ProcessReward, VelrReward};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use diffusion_core::vae::LatentNorm;

use crate::{
    alignment::{AlignmentConfig, OnlineAlignment},
    config::{FrameSelection, Method, RunConfig},
    error::{config_error, Result, TrainError},
    guard::NanGuard,
    metrics::{MetricsLog, StepMetrics},
    prompts::PromptSet,
};

/// The reward model a method trains against.
#[derive(Debug, Clone)]
pub enum LatentRewards<B: AutodiffBackend> {
    /// RGB ReFL: no latent model, the pixel reward of the decoded video.
    Pixel,
    /// PRFL's process reward model (kept frozen).
    Process(ProcessReward<B>),
    /// PRFL with several process reward models (kept frozen), scored with the ensemble's
    /// aggregation: with the lower confidence bound (mean - k std) the policy gains only where
    /// the members agree, as VELR's uncertainty penalty (seed 002, section 4.2).
    ProcessEnsemble(Ensemble<ProcessReward<B>>),
    /// PRFL with a clean-latent VELR ensemble applied to the frozen initial generator's
    /// prediction of the clean sample ([`DenoisedReward`]; the denoiser is frozen here).
    Denoised(DenoisedReward<B, WanTransformer<B>, Ensemble<VelrReward<B>>>),
    /// VELR's ensemble (frozen for the policy; fine-tuned by online alignment). With PRFL, an
    /// ensemble of noise-aware models ([`latent_reward::NoiseInput::BlockFilm`]) scores the
    /// noisy latent at its noise level, with the ensemble's aggregation (frozen).
    Ensemble(Ensemble<VelrReward<B>>),
}

/// `e` with every member's parameters frozen (no gradients; gradients still reach the input).
fn frozen<B: AutodiffBackend, M: Module<B>>(e: Ensemble<M>) -> Ensemble<M> {
    Ensemble {
        members: e.members.into_iter().map(Module::no_grad).collect(),
        ..e
    }
}

/// Real latents for PRFL's alternating SFT steps.
///
/// # Shapes
/// - `latents`: `[N, C, F, H, W]` normalised, `text`: `[N, S, D]`
#[derive(Debug, Clone)]
pub struct SftData<B: Backend> {
    /// Clean latents.
    pub latents: Tensor<B, 5>,
    /// Their prompts' embeddings.
    pub text: Tensor<B, 3>,
}

impl<B: Backend> SftData<B> {
    /// The latents and embeddings at `idx` (repeats allowed).
    pub fn batch(&self, idx: &[usize]) -> (Tensor<B, 5>, Tensor<B, 3>) {
        let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let i = Tensor::<B, 1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(ids, [idx.len()]),
            &self.latents.device(),
        );
        (
            self.latents.clone().select(0, i.clone()),
            self.text.clone().select(0, i),
        )
    }
}

/// Progress saved in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrainState {
    step: usize,
    guard: NanGuard,
    config: RunConfig,
}

type Policy<B> = WanTransformer<B>;

/// What a method's loss produced on one step.
struct MethodLoss<B: AutodiffBackend> {
    loss: Tensor<B, 1>,
    reward: f64,
    kl: Option<f64>,
    uncertainty: Option<f64>,
    /// VELR: the graded latents and the ensemble's variance on each, for the replay buffer.
    graded: Option<(Tensor<B::InnerBackend, 5>, Vec<f32>)>,
}

/// What one batch shard's method loss reported (see [`sharded_grads`]).
struct ShardOut<B: Backend> {
    /// The shard's share of the batch.
    weight: f64,
    /// The value of the shard's weighted loss.
    value: f64,
    reward: f64,
    kl: Option<f64>,
    uncertainty: Option<f64>,
    graded: Option<(Tensor<B, 5>, Vec<f32>)>,
}

impl<B: Backend> ShardOut<B> {
    /// The whole batch's report: loss values summed, means weighted by the shards' shares,
    /// graded latents concatenated in shard order.
    fn merge(shards: Vec<Self>) -> Self {
        let mean = |f: &dyn Fn(&Self) -> Option<f64>| -> Option<f64> {
            shards
                .iter()
                .map(|s| f(s).map(|v| v * s.weight))
                .sum::<Option<f64>>()
        };
        let (reward, kl, uncertainty) = (
            mean(&|s| Some(s.reward)).unwrap_or(f64::NAN),
            mean(&|s| s.kl),
            mean(&|s| s.uncertainty),
        );
        let value = shards.iter().map(|s| s.value).sum();
        let graded: Option<Vec<_>> = shards.into_iter().map(|s| s.graded).collect();
        let graded = graded.map(|parts| {
            let (latents, variances): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
            (Tensor::cat(latents, 0), variances.concat())
        });
        Self {
            weight: 1.0,
            value,
            reward,
            kl,
            uncertainty,
            graded,
        }
    }
}

/// A reward fine-tuning run of a Wan-architecture DiT: the loop services (AdamW with a schedule,
/// global gradient clipping, a NaN guard, JSONL metrics, atomic checkpoints, exact resume)
/// around one of three methods chosen by [`RunConfig::method`].
///
/// The per-step randomness (prompts, noise, windows) is a function of `(seed, step)`, and the
/// optimiser state is checkpointed, so a resumed run reproduces an uninterrupted one.
pub struct Trainer<B, V, R, P>
where
    B: AutodiffBackend,
    V: VideoAutoencoder<B> + AutodiffModule<B> + Sync,
    V::InnerModule: VideoAutoencoder<B::InnerBackend> + Sync,
    R: PixelReward<B, Prompt = P> + PixelReward<B::InnerBackend, Prompt = P> + Sync,
    P: Clone + Sync,
{
    config: RunConfig,
    /// The model being fine-tuned.
    pub policy: Policy<B>,
    reference: Policy<B::InnerBackend>,
    optim: OptimizerAdaptor<FusedAdamW, Policy<B>, B>,
    vae: V,
    norm: LatentNorm,
    pixel: R,
    /// The reward model.
    pub reward: LatentRewards<B>,
    train: PromptSet<B::InnerBackend, P>,
    heldout: PromptSet<B::InnerBackend, P>,
    sft: Option<SftData<B::InnerBackend>>,
    /// VELR's replay buffer and member fine-tuning (`None` for the other methods).
    alignment: Option<OnlineAlignment>,
    latent_shape: [usize; 4],
    schedule: Schedule,
    guard: NanGuard,
    step: usize,
    log: MetricsLog,
}

/// Everything a [`Trainer`] is built from.
pub struct TrainerParts<B, V, R, P>
where
    B: AutodiffBackend,
{
    /// The run.
    pub config: RunConfig,
    /// The pretrained DiT (a frozen copy becomes the KL reference).
    pub policy: Policy<B>,
    /// The VAE (frozen), for RGB ReFL, VELR's pixel labels and evaluation.
    pub vae: V,
    /// Latent normalisation of the DiT.
    pub norm: LatentNorm,
    /// The pixel reward (the held-out metric; RGB ReFL's reward; VELR's labels).
    pub pixel: R,
    /// The latent reward model, matching the method.
    pub reward: LatentRewards<B>,
    /// Training prompts.
    pub train: PromptSet<B::InnerBackend, P>,
    /// Held-out prompts for evaluation.
    pub heldout: PromptSet<B::InnerBackend, P>,
    /// Real latents for PRFL's SFT steps.
    pub sft: Option<SftData<B::InnerBackend>>,
    /// Latent shape `[C, F, H, W]` of one video.
    pub latent_shape: [usize; 4],
}

impl<B, V, R, P> Trainer<B, V, R, P>
where
    B: AutodiffBackend,
    V: VideoAutoencoder<B> + AutodiffModule<B> + Sync,
    V::InnerModule: VideoAutoencoder<B::InnerBackend> + Sync,
    R: PixelReward<B, Prompt = P> + PixelReward<B::InnerBackend, Prompt = P> + Sync,
    P: Clone + Sync,
{
    /// Builds a trainer, resuming from `config.out/checkpoint` when a checkpoint of the same
    /// config is there.
    ///
    /// # Errors
    /// `Config` when the reward model does not match the method or the config is invalid;
    /// `Checkpoint` when a checkpoint exists for a different config.
    pub fn new(parts: TrainerParts<B, V, R, P>) -> Result<Self> {
        let TrainerParts {
            config,
            policy,
            vae,
            norm,
            pixel,
            reward,
            train,
            heldout,
            sft,
            latent_shape,
        } = parts;
        config.validate()?;
        let matches = matches!(
            (&config.method, &reward),
            (Method::RgbRefl(_), LatentRewards::Pixel)
                | (
                    Method::Prfl(_),
                    LatentRewards::Process(_)
                        | LatentRewards::ProcessEnsemble(_)
                        | LatentRewards::Denoised(_)
                        | LatentRewards::Ensemble(_)
                )
                | (Method::Velr(_), LatentRewards::Ensemble(_))
        );
        if !matches {
            return Err(config_error(
                "method",
                "the reward model does not match the method",
            ));
        }
        if let (Method::Prfl(p), None) = (&config.method, &sft) {
            if p.sft_every > 0 {
                return Err(config_error(
                    "method.prfl.sft_every",
                    "SFT steps need real latents (`sft`)",
                ));
            }
        }
        let reward = match reward {
            LatentRewards::Process(m) => LatentRewards::Process(m.no_grad()),
            LatentRewards::ProcessEnsemble(e) => LatentRewards::ProcessEnsemble(frozen(e)),
            LatentRewards::Denoised(d) => LatentRewards::Denoised(DenoisedReward::new(
                d.denoiser.no_grad(),
                frozen(d.reward),
                d.timestep_scale,
            )),
            // frozen under PRFL; VELR fine-tunes its members (online alignment)
            LatentRewards::Ensemble(e) if matches!(config.method, Method::Prfl(_)) => {
                LatentRewards::Ensemble(frozen(e))
            }
            other => other,
        };
        let schedule = FlowMatchScheduleConfig::new(config.sampling.steps)
            .with_shift(config.sampling.shift)
            .init()?;
        let alignment = match &config.method {
            Method::Velr(v) => Some(OnlineAlignment::new(
                AlignmentConfig {
                    capacity: v.buffer,
                    steps: v.align_steps,
                    batch: config.batch,
                    lr: v.align_lr,
                },
                latent_shape,
            )?),
            _ => None,
        };
        let log = MetricsLog::open(&config.out.join("metrics.jsonl"))?;
        let mut trainer = Self {
            reference: policy.valid(),
            policy,
            optim: FusedAdamW::new(config.optim.weight_decay).init(),
            vae: vae.no_grad(),
            norm,
            pixel,
            reward,
            train,
            heldout,
            sft,
            alignment,
            latent_shape,
            schedule,
            guard: NanGuard::new(config.max_skipped),
            step: 0,
            log,
            config,
        };
        trainer.resume()?;
        Ok(trainer)
    }

    /// The run's config.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The next step to run (the number of steps done).
    pub fn step(&self) -> usize {
        self.step
    }

    /// Steps skipped by the NaN guard.
    pub fn skipped(&self) -> usize {
        self.guard.skipped
    }

    fn checkpoint_dir(&self) -> PathBuf {
        self.config.out.join("checkpoint")
    }

    /// Writes the policy, the optimiser state, VELR's ensemble and buffer, and the step into
    /// `out/checkpoint`. Every file is written atomically and `state.json` last, naming the
    /// step its files belong to, so a crash mid-save leaves the previous checkpoint usable.
    pub fn save_checkpoint(&self) -> Result<()> {
        let dir = self.checkpoint_dir();
        let tag = format!("{:08}", self.step);
        save_record(self.policy.clone(), &dir.join(format!("policy-{tag}.mpk")))?;
        let optim = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
            .record(self.optim.to_record(), ())
            .map_err(|e| self.ckpt_error(e.to_string()))?;
        write_atomic(&dir.join(format!("optim-{tag}.mpk")), &optim)?;
        if let LatentRewards::Ensemble(e) = &self.reward {
            for (i, m) in e.members.iter().enumerate() {
                save_record(m.clone(), &dir.join(format!("member{i}-{tag}.mpk")))?;
            }
        }
        if let Some(a) = &self.alignment {
            replay_buffer::save(&a.buffer, &dir.join(format!("buffer-{tag}.json")))?;
        }
        let state = TrainState {
            step: self.step,
            guard: self.guard,
            config: self.config.clone(),
        };
        write_atomic(
            &dir.join("state.json"),
            &serde_json::to_vec_pretty(&state).expect("state serialises"),
        )?;
        // older files are no longer referenced
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = name.ends_with(".mpk") || name.starts_with("buffer-");
                if ours && !name.contains(&tag) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn ckpt_error(&self, reason: String) -> TrainError {
        TrainError::Checkpoint {
            path: self.checkpoint_dir(),
            reason,
        }
    }

    fn resume(&mut self) -> Result<()> {
        let dir = self.checkpoint_dir();
        let Ok(text) = std::fs::read_to_string(dir.join("state.json")) else {
            return Ok(());
        };
        let state: TrainState =
            serde_json::from_str(&text).map_err(|e| self.ckpt_error(format!("state.json: {e}")))?;
        if state.config != self.config {
            return Err(self.ckpt_error(
                "was written by a different run config; use another `out` folder or delete it"
                    .into(),
            ));
        }
        let tag = format!("{:08}", state.step);
        let device = self.policy.devices()[0].clone();
        self.policy = load_record(
            self.policy.clone(),
            &dir.join(format!("policy-{tag}.mpk")),
            &device,
        )?;
        let path = dir.join(format!("optim-{tag}.mpk"));
        let bytes = std::fs::read(&path)
            .map_err(|e| self.ckpt_error(format!("{}: {e}", path.display())))?;
        let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
            .load(bytes, &device)
            .map_err(|e| self.ckpt_error(format!("{}: {e}", path.display())))?;
        self.optim =
            std::mem::replace(&mut self.optim, FusedAdamW::new(0.0).init()).load_record(record);
        if let LatentRewards::Ensemble(e) = &mut self.reward {
            for (i, m) in e.members.iter_mut().enumerate() {
                *m = load_record(
                    m.clone(),
                    &dir.join(format!("member{i}-{tag}.mpk")),
                    &device,
                )?;
            }
        }
        if let Some(a) = &mut self.alignment {
            a.buffer = replay_buffer::load(&dir.join(format!("buffer-{tag}.json")))?;
        }
        self.step = state.step;
        self.guard = state.guard;
        Ok(())
    }

    /// Runs the remaining steps with a progress bar, logging every step and checkpointing as
    /// configured (and after the last step). Returns the metrics of the steps run.
    pub fn run(&mut self) -> Result<Vec<StepMetrics>> {
        let total = self.config.steps;
        let mut pb = Progress::new(total - self.step.min(total), "refl");
        let mut out = Vec::new();
        while self.step < total {
            let m = self.train_step()?;
            pb.tick(format!(
                "reward {:.3}{}",
                m.latent_reward.unwrap_or(f64::NAN),
                m.heldout_reward
                    .map(|r| format!(" held-out {r:.3}"))
                    .unwrap_or_default()
            ));
            out.push(m);
        }
        Ok(out)
    }

    /// Runs one step: the method's loss, backward, clipping, the guarded update, PRFL's SFT
    /// step or VELR's buffer and alignment, evaluation and checkpoint when due.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let step = self.step;
        let device = self.policy.devices()[0].clone();
        let lr = self
            .config
            .optim
            .schedule
            .at(self.config.optim.lr, step, self.config.steps);
        let heap = HeapProbe::start();
        let _ = B::sync(&device);
        let base_reserved = device_reserved_bytes::<B>(&device);
        let t0 = Instant::now();

        let mut rng = step_rng(self.config.seed, step);
        let idx: Vec<usize> = (0..self.config.batch)
            .map(|_| rng.random_range(0..self.train.len()))
            .collect();
        let (prompts, text) = self.train.batch(&idx);
        let text = Tensor::<B, 3>::from_inner(text);
        let [c, f, h, w] = self.latent_shape;
        let noise = randn::<B, 5>([idx.len(), c, f, h, w], &mut rng, &device);
        let rollout_seed = rng.random::<u64>();
        // the random start step of the gradient window (PRFL, VELR), drawn for the whole batch
        let start = match &self.config.method {
            Method::RgbRefl(_) => 0,
            Method::Prfl(m) => {
                let [a, b] = m
                    .start
                    .unwrap_or([0, self.config.sampling.steps - m.window]);
                rng.random_range(a..b)
            }
            Method::Velr(m) => rng.random_range(m.start[0]..m.start[1]),
        };

        let batch = idx.len();
        let shards = self.config.shards.min(batch);
        let (grads, outs) = sharded_grads(&self.policy, shards, |policy, i| {
            let rows = shard_rows(batch, shards, i);
            let (a, n) = (rows.start, rows.len());
            let MethodLoss {
                loss,
                reward,
                kl,
                uncertainty,
                graded,
            } = self.method_loss(
                policy,
                noise.clone().narrow(0, a, n),
                text.clone().narrow(0, a, n),
                &prompts[rows],
                start,
                rollout_seed,
            )?;
            // the shard's share of the batch mean
            let weight = n as f64 / batch as f64;
            let loss = loss.mul_scalar(weight);
            let value = loss.clone().into_scalar().elem::<f64>();
            let out = ShardOut {
                weight,
                value,
                reward,
                kl,
                uncertainty,
                graded,
            };
            Ok::<_, TrainError>((loss, out))
        })?;
        let out = ShardOut::merge(outs);
        let (loss_value, norm, admitted) = self.update(grads, out.value, lr)?;

        let mut sft_loss = None;
        if let Method::Prfl(m) = &self.config.method {
            if m.sft_every > 0 && step % m.sft_every == 0 {
                sft_loss = self.sft_step(lr, &mut rng)?;
            }
        }
        if let (Method::Velr(m), Some((graded, variance))) =
            (self.config.method.clone(), out.graded)
        {
            if admitted {
                if m.label_every > 0 && step % m.label_every == 0 {
                    self.fill_buffer(graded, &idx, variance, &prompts)?;
                }
                if m.align_every > 0 && (step + 1) % m.align_every == 0 {
                    self.align(&mut rng)?;
                }
            }
        }
        let _ = B::sync(&device);
        let step_seconds = t0.elapsed().as_secs_f64();
        let peak_bytes = match (base_reserved, device_reserved_bytes::<B>(&device)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => heap.peak().map(|p| p as u64),
        };
        self.step += 1;
        let every = self.config.eval_every;
        let heldout_reward =
            if (every > 0 && self.step % every == 0) || self.step == self.config.steps {
                Some(self.heldout_reward()?)
            } else {
                None
            };
        let metrics = StepMetrics {
            step,
            loss: admitted.then_some(loss_value),
            latent_reward: Some(out.reward),
            kl: out.kl,
            sft_loss,
            grad_norm: Some(norm),
            lr,
            heldout_reward,
            uncertainty: out.uncertainty,
            step_seconds,
            peak_bytes,
            skipped: self.guard.skipped,
        };
        self.log.write(&metrics)?;
        let ck = self.config.checkpoint_every;
        if (ck > 0 && self.step % ck == 0) || self.step == self.config.steps {
            self.save_checkpoint()?;
        }
        Ok(metrics)
    }

    /// Mean pixel reward of samples (Euler, the run's sampler, fixed seeds) for the held-out
    /// prompts: the metric the trainer never optimises directly in latent methods.
    pub fn heldout_reward(&self) -> Result<f64> {
        heldout_reward(
            &self.policy.valid(),
            &self.vae.valid(),
            &self.norm,
            &self.pixel,
            &self.heldout,
            &self.schedule,
            self.latent_shape,
        )
    }

    /// The Euler chain over steps `0..start + len` from `noise`, recording gradients through
    /// steps `start..start + len` only (PRFL's and VELR's windows).
    fn windowed_rollout(
        &self,
        policy: &Policy<B>,
        start: usize,
        len: usize,
        noise: Tensor<B, 5>,
        text: &Tensor<B, 3>,
        seed: u64,
    ) -> Result<diffusion_core::Trajectory<B>> {
        Ok(Rollout::new(&self.schedule, &EulerOde)
            .with_steps(0..start + len)
            .with_window(GradWindow::Range { start, len })
            .run(policy, noise, &Conditioning::new(text.clone()), seed)?)
    }

    /// The configured method's loss on `policy` (a shard's fork of the policy) for a batch of
    /// noise and prompts; `start` is the gradient window's start step (PRFL, VELR).
    fn method_loss(
        &self,
        policy: &Policy<B>,
        noise: Tensor<B, 5>,
        text: Tensor<B, 3>,
        prompts: &[P],
        start: usize,
        seed: u64,
    ) -> Result<MethodLoss<B>> {
        match &self.config.method {
            Method::RgbRefl(m) => self.rgb_loss(policy, m, noise, text, prompts, seed),
            Method::Prfl(m) => self.prfl_loss(policy, m, noise, text, start, seed),
            Method::Velr(m) => self.velr_loss(policy, m, noise, text, start, seed),
        }
    }

    /// RGB ReFL (ImageReward ReFL; VADER): the full chain with the last `window` steps under
    /// gradient, the final latent decoded (all frames, or the first latent frame alone) and
    /// scored by the pixel reward; `L = -lambda * r`.
    fn rgb_loss(
        &self,
        policy: &Policy<B>,
        m: &crate::config::RgbReflConfig,
        noise: Tensor<B, 5>,
        text: Tensor<B, 3>,
        prompts: &[P],
        seed: u64,
    ) -> Result<MethodLoss<B>> {
        let traj = Rollout::new(&self.schedule, &EulerOde)
            .with_window(GradWindow::LastK(m.window))
            .run(policy, noise, &Conditioning::new(text), seed)?;
        let z0 = traj.last().clone();
        let z = match m.frames {
            FrameSelection::All => z0,
            FrameSelection::First => z0.narrow(2, 0, 1),
        };
        let video = self.norm.decode(&self.vae, z);
        let r = PixelReward::<B>::score_pixels(&self.pixel, video, prompts)?;
        let reward = r.clone().mean().into_scalar().elem::<f64>();
        Ok(MethodLoss {
            loss: r.mean().mul_scalar(-m.lambda),
            reward,
            kl: None,
            uncertainty: None,
            graded: None,
        })
    }

    /// PRFL (seed 001, section 3.3): roll out steps `0..s` without gradients (`s` uniform in
    /// `[0, S - 1 - K]`), `K` steps with gradients, score the noisy latent `z_{s+K}` at its noise
    /// level with the process reward model, `L = lambda * relu(margin - r)` (`+ kl_beta * KL`
    /// to the initial model at `z_{s+K}` when `kl_beta > 0`).
    fn prfl_loss(
        &self,
        policy: &Policy<B>,
        m: &crate::config::PrflConfig,
        noise: Tensor<B, 5>,
        text: Tensor<B, 3>,
        s: usize,
        seed: u64,
    ) -> Result<MethodLoss<B>> {
        let traj = self.windowed_rollout(policy, s, m.window, noise, &text, seed)?;
        let b = text.dims()[0];
        let sigma = Tensor::full([b], *traj.sigmas.last().expect("non-empty"), &text.device());
        let z = traj.last().clone();
        let (zs, ts) = (z.clone(), text.clone());
        let r = match &self.reward {
            LatentRewards::Process(prm) => prm.score(zs, sigma, ts),
            LatentRewards::ProcessEnsemble(ens) => ens.score(zs, sigma, ts),
            LatentRewards::Ensemble(ens) => ens.score(zs, sigma, ts),
            LatentRewards::Denoised(d) => d.score(zs, sigma, ts),
            LatentRewards::Pixel => unreachable!("checked in Trainer::new"),
        };
        let reward = r.clone().mean().into_scalar().elem::<f64>();
        let mut loss = activation::relu(r.neg().add_scalar(m.margin))
            .mean()
            .mul_scalar(m.lambda);
        // the KL at the graded latent (none after the last step: nothing is left to sample)
        let end = s + m.window;
        let kl = (m.kl_beta > 0.0 && end < self.config.sampling.steps)
            .then(|| self.velocity_kl(policy, z, end, text).1);
        if let Some(kl) = &kl {
            loss = loss + kl.clone().mul_scalar(m.kl_beta);
        }
        Ok(MethodLoss {
            loss,
            reward,
            kl: kl.map(|kl| kl.into_scalar().elem::<f64>()),
            uncertainty: None,
            graded: None,
        })
    }

    /// VELR (seed 002, section 4.3): roll out to a random mid-noise start step without
    /// gradients, `K` steps with gradients, jump to `x0_hat = z - sigma v`, score it with the
    /// ensemble; `L = -r + beta * KL`, with KL the squared velocity difference to the initial
    /// model at the graded latent (the KL of the two models' Gaussian transitions up to a
    /// per-step constant).
    fn velr_loss(
        &self,
        policy: &Policy<B>,
        m: &crate::config::VelrConfig,
        noise: Tensor<B, 5>,
        text: Tensor<B, 3>,
        start: usize,
        seed: u64,
    ) -> Result<MethodLoss<B>> {
        let LatentRewards::Ensemble(ens) = &self.reward else {
            unreachable!("checked in Trainer::new")
        };
        let end = start + m.window;
        let traj = self.windowed_rollout(policy, start, m.window, noise, &text, seed)?;
        let z = traj.last().clone();
        let b = text.dims()[0];
        let device = text.device();
        let (x0, kl) = if end < self.config.sampling.steps {
            let sigma = self.schedule.sigmas()[end];
            let (v, kl) = self.velocity_kl(policy, z.clone(), end, text.clone());
            (predict_x0(z, v, sigma), kl)
        } else {
            (z, Tensor::zeros([1], &device))
        };
        let scores =
            frozen(ens.clone()).score_members(x0.clone(), Tensor::zeros([b], &device), text);
        let r = scores.aggregate(m.aggregation);
        let var = scores.variance();
        let reward = r.clone().mean().into_scalar().elem::<f64>();
        let kl_value = kl.clone().into_scalar().elem::<f64>();
        let var_values = latent_reward::error::host_f32(var.inner())?;
        Ok(MethodLoss {
            loss: r.mean().neg() + kl.mul_scalar(m.kl_beta),
            reward,
            kl: Some(kl_value),
            uncertainty: Some(var_values.iter().map(|v| *v as f64).sum::<f64>() / b as f64),
            graded: Some((x0.inner(), var_values)),
        })
    }

    /// The policy's velocity at latent `z` of step `step` and the KL of its transition to the
    /// initial model's there: the mean squared velocity difference (the KL of the two models'
    /// Gaussian transitions up to a per-step constant; VELR, seed 002, section 4.3).
    ///
    /// # Shapes
    /// - `z`: `[B, C, F, H, W]`, `text`: `[B, S, D]` -> (velocity `[B, C, F, H, W]`, KL `[1]`)
    fn velocity_kl(
        &self,
        policy: &Policy<B>,
        z: Tensor<B, 5>,
        step: usize,
        text: Tensor<B, 3>,
    ) -> (Tensor<B, 5>, Tensor<B, 1>) {
        let b = text.dims()[0];
        let t = Tensor::<B, 1>::full([b], self.schedule.timesteps()[step], &text.device());
        let v = policy.velocity(z.clone(), t.clone(), text.clone());
        let v_ref = self.reference.velocity(z.inner(), t.inner(), text.inner());
        let kl = (v.clone() - Tensor::from_inner(v_ref))
            .powi_scalar(2)
            .mean();
        (v, kl)
    }

    /// Global-norm clipping and the guarded AdamW update of the policy with the gradients of a
    /// loss of value `value`. Returns `(loss, gradient norm, whether the update was applied)`.
    fn update(&mut self, grads: GradientsParams, value: f64, lr: f64) -> Result<(f64, f64, bool)> {
        let clip = self.config.optim.grad_clip.unwrap_or(f64::INFINITY);
        let (grads, norm) = clip_grad_norm(&self.policy, grads, clip);
        let admitted = self.guard.admit(self.step, &[value, norm])?;
        if admitted {
            self.policy = self.optim.step(lr, self.policy.clone(), grads);
        }
        Ok((value, norm, admitted))
    }

    /// PRFL's SFT step: flow matching on a batch of real latents.
    fn sft_step(&mut self, lr: f64, rng: &mut rand::rngs::StdRng) -> Result<Option<f64>> {
        let Some(sft) = &self.sft else {
            return Ok(None);
        };
        let n = sft.latents.dims()[0];
        let idx: Vec<usize> = (0..self.config.batch)
            .map(|_| rng.random_range(0..n))
            .collect();
        let (latents, text) = sft.batch(&idx);
        let x0 = Tensor::<B, 5>::from_inner(latents);
        let eps = randn(x0.dims(), rng, &x0.device());
        let sigmas = TimestepSampling::Uniform {
            shift: self.config.sampling.shift,
        }
        .sample(idx.len(), rng);
        let text = Tensor::<B, 3>::from_inner(text);
        let batch = idx.len();
        let shards = self.config.shards.min(batch);
        let (grads, values) = sharded_grads(&self.policy, shards, |policy, i| {
            let rows = shard_rows(batch, shards, i);
            let (a, n) = (rows.start, rows.len());
            let part = |t: &Tensor<B, 5>| t.clone().narrow(0, a, n);
            let loss = flow_matching_loss(
                policy,
                part(&x0),
                part(&eps),
                &sigmas[rows],
                1000,
                text.clone().narrow(0, a, n),
            )
            .sum()
            .div_scalar(batch as f64);
            let value = loss.clone().into_scalar().elem::<f64>();
            Ok::<_, TrainError>((loss, value))
        })?;
        Ok(Some(self.update(grads, values.iter().sum(), lr)?.0))
    }

    /// VELR's buffer: each graded latent with its pixel reward, prioritised by the ensemble's
    /// variance on it.
    fn fill_buffer(
        &mut self,
        graded: Tensor<B::InnerBackend, 5>,
        idx: &[usize],
        variance: Vec<f32>,
        prompts: &[P],
    ) -> Result<()> {
        let vae = self.vae.valid();
        let video = self.norm.decode(&vae, graded.clone());
        let rewards = latent_reward::error::host_f32(
            PixelReward::<B::InnerBackend>::score_pixels(&self.pixel, video, prompts)?,
        )?;
        match &mut self.alignment {
            Some(a) => a.push(graded, idx, &rewards, &variance),
            None => Ok(()),
        }
    }

    /// VELR's online alignment of the ensemble's members from the buffer.
    fn align(&mut self, rng: &mut rand::rngs::StdRng) -> Result<()> {
        let (LatentRewards::Ensemble(ens), Some(a)) = (&mut self.reward, &self.alignment) else {
            return Ok(());
        };
        let train = &self.train;
        a.align(&mut ens.members, |idx| train.batch(idx).1, rng)
    }
}

/// Mean pixel reward of Euler samples of `policy` for the prompts of `heldout`, from fixed noise
/// (the same for every policy, so two policies compare on equal terms): [`Trainer`]'s held-out
/// metric, usable for models trained elsewhere (GRPO).
///
/// # Errors
/// Shape errors from the chain or the pixel reward.
pub fn heldout_reward<B, V, R, P>(
    policy: &WanTransformer<B>,
    vae: &V,
    norm: &LatentNorm,
    pixel: &R,
    heldout: &PromptSet<B, P>,
    schedule: &Schedule,
    latent_shape: [usize; 4],
) -> Result<f64>
where
    B: Backend,
    V: VideoAutoencoder<B> + Sync,
    R: PixelReward<B, Prompt = P> + Sync,
    P: Clone + Sync,
{
    let device = policy.devices()[0].clone();
    let [c, f, h, w] = latent_shape;
    let all: Vec<usize> = (0..heldout.len()).collect();
    let chunks: Vec<&[usize]> = all.chunks(8).collect();
    // the chunks are independent (each has its own noise seed): one per thread, summed in order
    let sums = parallel_map(chunks.len(), cores(), |k| -> Result<f64> {
        let (prompts, text) = heldout.batch(chunks[k]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xE7A1 + k as u64);
        let noise = randn([chunks[k].len(), c, f, h, w], &mut rng, &device);
        let traj =
            Rollout::new(schedule, &EulerOde).sample(policy, noise, &Conditioning::new(text), 0)?;
        let video = norm.decode(vae, traj.last().clone());
        let r = pixel.score_pixels(video, &prompts)?;
        Ok(r.sum().into_scalar().elem::<f64>())
    });
    let mut total = 0.0;
    for s in sums {
        total += s?;
    }
    Ok(total / heldout.len() as f64)
}
