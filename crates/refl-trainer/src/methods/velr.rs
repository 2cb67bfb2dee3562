//! VELR ("VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models", section
//! 4.3): truncated mid-step ReFL against an ensemble of latent rewards, a KL term to the
//! initial model, and online alignment of the ensemble from a variance-prioritised buffer.

use burn::{
    module::AutodiffModule,
    tensor::{backend::AutodiffBackend, ElementConversion, Tensor},
};
use diffusion_core::{
    models::vae::{LatentNorm, VideoAutoencoder},
    sampling::rollout::predict_x0,
    Conditioning, EulerOde, GradWindow, Rollout, Schedule,
};
use ensemble::{Aggregation, Ensemble};
use latent_reward::{error::host_f32, LatentReward, PixelReward};
use rand::{rngs::StdRng, Rng};
use serde::{Deserialize, Serialize};

use crate::{
    alignment::{AlignmentConfig, OnlineAlignment},
    checkpoint::{CheckpointReader, CheckpointWriter},
    error::{config_error, Result, TrainError},
    method::{Method, StepReport},
    methods::{
        batch::{check_batch, checked_shapes, one, sharded_loss, Batch, SamplingConfig, ShardLoss},
        kl::velocity_kl,
    },
    policy::{Policy, PolicyOptimizer},
    prompts::PromptSet,
};

/// Settings of VELR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VelrConfig {
    /// Prompts (videos) per step.
    pub batch: usize,
    /// The rollouts' sampler.
    pub sampling: SamplingConfig,
    /// Range of start steps (inclusive, exclusive) of the gradient window, in the mid-noise
    /// regime (paper: 15..25 of 50).
    pub start: [usize; 2],
    /// Steps with gradients before jumping to `x0_hat` (paper: truncation 10 of 50).
    pub window: usize,
    /// Weight of the KL term to the initial model (paper: 10).
    pub kl_beta: f64,
    /// Aggregation of the ensemble's member scores.
    pub aggregation: Aggregation,
    /// Replay buffer capacity (paper: 256).
    pub buffer: usize,
    /// Label the graded latents with the pixel reward (a no-grad decode) and push them to the
    /// buffer every this many steps (0: never). Labelling every step dominates a step's time at
    /// Wan-like decoder widths; every few steps amortises it.
    #[serde(default = "one")]
    pub label_every: usize,
    /// Fine-tune the ensemble every this many steps (0: never; the buffer still fills).
    pub align_every: usize,
    /// Gradient steps of each alignment round.
    pub align_steps: usize,
    /// Learning rate of the alignment (paper: 1e-5).
    pub align_lr: f64,
    /// Batch shards whose forward and backward run side by side on their own threads.
    #[serde(default = "one")]
    pub shards: usize,
}

/// The largest replay buffer accepted (items hold a whole latent each).
pub const MAX_BUFFER: usize = 1 << 20;

impl Default for VelrConfig {
    /// The paper's settings: 50 steps at shift 5, the window starting in steps 15..25 with 10
    /// steps of gradients, KL weight 10, mean aggregation, a buffer of 256, two alignment steps
    /// every 10 steps at lr 1e-5.
    fn default() -> Self {
        Self {
            batch: 1,
            sampling: SamplingConfig {
                steps: 50,
                shift: 5.0,
            },
            start: [15, 25],
            window: 10,
            kl_beta: 10.0,
            aggregation: Aggregation::Mean,
            buffer: 256,
            label_every: 1,
            align_every: 10,
            align_steps: 2,
            align_lr: 1e-5,
            shards: 1,
        }
    }
}

impl VelrConfig {
    /// Checks every value, naming the first bad field (under `velr.`).
    ///
    /// # Errors
    /// `Config` naming the field.
    pub fn validate(&self) -> Result<()> {
        check_batch("velr", self.batch, self.shards)?;
        self.sampling.schedule("velr.sampling")?;
        let s = self.sampling.steps;
        let [a, b] = self.start;
        if a >= b || b > s {
            return Err(config_error(
                "velr.start",
                format!("[{a}, {b}) must be a non-empty part of 0..{s}"),
            ));
        }
        if self.window == 0 || b - 1 + self.window > s {
            return Err(config_error(
                "velr.window",
                format!(
                    "{} steps from a start below {b} overrun {s} steps",
                    self.window
                ),
            ));
        }
        if !(self.kl_beta >= 0.0 && self.kl_beta.is_finite()) {
            return Err(config_error("velr.kl_beta", "must be >= 0 and finite"));
        }
        if self.buffer == 0 || self.buffer > MAX_BUFFER {
            return Err(config_error(
                "velr.buffer",
                format!("{} not in 1..={MAX_BUFFER}", self.buffer),
            ));
        }
        if self.align_every > 0 {
            if self.label_every == 0 {
                return Err(config_error(
                    "velr.label_every",
                    "alignment needs labelled samples: must be >= 1 when align_every > 0",
                ));
            }
            if self.align_steps == 0 {
                return Err(config_error("velr.align_steps", "must be at least 1"));
            }
            if !(self.align_lr > 0.0 && self.align_lr.is_finite()) {
                return Err(config_error(
                    "velr.align_lr",
                    format!("{} must be finite and > 0", self.align_lr),
                ));
            }
        }
        Ok(())
    }
}

/// VELR with an ensemble of any latent reward models `L`: roll out to a random mid-noise start
/// step without gradients, `K` steps with gradients, jump to `x0_hat = z - sigma v`, score it
/// with the ensemble; `L = -r + beta * KL`, with KL the squared velocity difference to the
/// initial model at the graded latent. The graded latents, labelled with the pixel reward of
/// their decoding, fill a replay buffer prioritised by the ensemble's variance, and every
/// `align_every` steps each member is fine-tuned on it ([`OnlineAlignment`]); the members are
/// part of the checkpoint.
pub struct Velr<B: AutodiffBackend, M: Policy<B>, L, V, R, P> {
    config: VelrConfig,
    ensemble: Ensemble<L>,
    vae: V,
    norm: LatentNorm,
    pixel: R,
    train: PromptSet<B::InnerBackend, P>,
    latent_shape: [usize; 4],
    alignment: OnlineAlignment,
    schedule: Schedule,
    reference: Option<M::InnerModule>,
}

impl<B, M, L, V, R, P> Velr<B, M, L, V, R, P>
where
    B: AutodiffBackend,
    M: Policy<B>,
    L: LatentReward<B> + AutodiffModule<B> + Send + Sync,
    V: VideoAutoencoder<B::InnerBackend> + Sync,
    R: PixelReward<B::InnerBackend, Prompt = P> + Sync,
    P: Clone + Send + Sync,
{
    /// VELR on the prompts of `train` with videos of latent shape `[C, F, H, W]`; `vae`, `norm`
    /// and `pixel` label the buffer's latents.
    ///
    /// # Errors
    /// `Config` naming a bad field.
    pub fn new(
        config: VelrConfig,
        ensemble: Ensemble<L>,
        vae: V,
        norm: LatentNorm,
        pixel: R,
        train: PromptSet<B::InnerBackend, P>,
        latent_shape: [usize; 4],
    ) -> Result<Self> {
        config.validate()?;
        // without alignment (`align_every = 0`) the buffer still fills; its fine-tuning settings,
        // unchecked then, are never used
        let alignment = OnlineAlignment::new(
            AlignmentConfig {
                capacity: config.buffer,
                steps: config.align_steps.max(1),
                batch: config.batch,
                lr: if config.align_lr > 0.0 {
                    config.align_lr
                } else {
                    1e-5
                },
            },
            latent_shape,
        )
        .map_err(|e| match e {
            TrainError::Config { field, reason } if field == "alignment.capacity" => {
                config_error("velr.buffer", reason)
            }
            e => e,
        })?;
        Ok(Self {
            schedule: config.sampling.schedule("velr.sampling")?,
            config,
            ensemble,
            vae,
            norm,
            pixel,
            train,
            latent_shape,
            alignment,
            reference: None,
        })
    }

    /// The ensemble, as online alignment left it.
    pub fn ensemble(&self) -> &Ensemble<L> {
        &self.ensemble
    }

    /// The replay buffer and member fine-tuning.
    pub fn alignment(&self) -> &OnlineAlignment {
        &self.alignment
    }

    fn loss(
        &self,
        policy: &M,
        frozen: &Ensemble<L>,
        noise: Tensor<B, 5>,
        text: Tensor<B, 3>,
        start: usize,
        seed: u64,
    ) -> Result<ShardLoss<B>> {
        let m = &self.config;
        let end = start + m.window;
        let traj = Rollout::new(&self.schedule, &EulerOde)
            .with_steps(0..end)
            .with_window(GradWindow::Range {
                start,
                len: m.window,
            })
            .run(policy, noise, &Conditioning::new(text.clone()), seed)?;
        let z = traj.last().clone();
        let b = text.dims()[0];
        let device = text.device();
        let (x0, kl) = match &self.reference {
            Some(reference) if end < m.sampling.steps => {
                let sigma = self.schedule.sigmas()[end];
                let (v, kl) = velocity_kl(
                    policy,
                    reference,
                    &self.schedule,
                    z.clone(),
                    end,
                    text.clone(),
                );
                (predict_x0(z, v, sigma), kl)
            }
            _ => (z, Tensor::zeros([1], &device)),
        };
        let scores = frozen.score_members(x0.clone(), Tensor::zeros([b], &device), text);
        let r = scores.aggregate(m.aggregation);
        let var = host_f32(scores.variance().inner())?;
        let reward = r.clone().mean().into_scalar().elem::<f64>();
        let kl_value = kl.clone().into_scalar().elem::<f64>();
        Ok(ShardLoss {
            loss: r.mean().neg() + kl.mul_scalar(m.kl_beta),
            reward,
            kl: Some(kl_value),
            uncertainty: Some(var.iter().map(|v| *v as f64).sum::<f64>() / b as f64),
            graded: Some((x0.inner(), var)),
        })
    }
}

impl<B, M, L, V, R, P> Method<B, M> for Velr<B, M, L, V, R, P>
where
    B: AutodiffBackend,
    M: Policy<B>,
    L: LatentReward<B> + AutodiffModule<B> + Send + Sync,
    V: VideoAutoencoder<B::InnerBackend> + Sync,
    R: PixelReward<B::InnerBackend, Prompt = P> + Sync,
    P: Clone + Send + Sync,
{
    fn name(&self) -> &'static str {
        "velr"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn init(&mut self, policy: &M) -> Result<()> {
        let (latent, text) = checked_shapes(policy, self.latent_shape, &self.train)?;
        for m in &self.ensemble.members {
            m.check_input(latent, text)?;
        }
        // the KL reference is the initial policy, also at a zero weight (VELR reports the KL)
        self.reference = Some(policy.valid());
        Ok(())
    }

    fn step(
        &mut self,
        step: usize,
        optim: &mut PolicyOptimizer<B, M>,
        rng: &mut StdRng,
    ) -> Result<StepReport> {
        let cfg = self.config.clone();
        let device = self.train.text.device();
        let batch = Batch::<B, P>::draw(&self.train, cfg.batch, self.latent_shape, rng, &device);
        let start = rng.random_range(cfg.start[0]..cfg.start[1]);
        // frozen for the policy's loss: gradients reach the input, not the members
        let frozen = self.ensemble.frozen();
        let (grads, out) = sharded_loss(optim.policy(), cfg.batch, cfg.shards, |policy, rows| {
            let (a, n) = (rows.start, rows.len());
            self.loss(
                policy,
                &frozen,
                batch.noise.clone().narrow(0, a, n),
                batch.text.clone().narrow(0, a, n),
                start,
                batch.seed,
            )
        })?;
        let update = optim.apply(grads, out.value)?;
        if let (true, Some((graded, variance))) = (update.applied(), out.graded) {
            if cfg.label_every > 0 && step % cfg.label_every == 0 {
                let video = self.norm.decode(&self.vae, graded.clone());
                let rewards = host_f32(self.pixel.score_pixels(video, &batch.prompts)?)?;
                self.alignment
                    .push(graded, &batch.idx, &rewards, &variance)?;
            }
            if cfg.align_every > 0 && (step + 1) % cfg.align_every == 0 {
                let train = &self.train;
                self.alignment
                    .align(&mut self.ensemble.members, |idx| train.batch(idx).1, rng)?;
            }
        }
        Ok(StepReport {
            update: Some(update),
            reward: Some(out.reward),
            kl: out.kl,
            uncertainty: out.uncertainty,
            ..StepReport::default()
        })
    }

    fn save(&self, checkpoint: &mut CheckpointWriter) -> Result<()> {
        for (i, m) in self.ensemble.members.iter().enumerate() {
            checkpoint.record(&format!("member{i}.mpk"), m.clone())?;
        }
        checkpoint.json("buffer.json", &self.alignment.buffer)
    }

    fn load(&mut self, checkpoint: &CheckpointReader, device: &B::Device) -> Result<()> {
        for (i, m) in self.ensemble.members.iter_mut().enumerate() {
            *m = checkpoint.record(&format!("member{i}.mpk"), m.clone(), device)?;
        }
        let buffer = checkpoint.json("buffer.json")?;
        self.alignment.set_buffer(buffer, self.train.len())
    }
}
