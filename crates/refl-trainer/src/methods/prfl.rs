//! PRFL: process reward feedback learning ("Video Generation Models Are Good Latent Reward
//! Models", section 3.3).

use burn::tensor::{activation, backend::AutodiffBackend, ElementConversion, Tensor};
use diffusion_core::{
    train::loss::TimestepSampling, Conditioning, EulerOde, GradWindow, Rollout, Schedule,
};
use latent_reward::LatentReward;
use rand::{rngs::StdRng, Rng};
use serde::{Deserialize, Serialize};

use crate::{
    error::{config_error, Result},
    method::{Method, StepReport},
    methods::{
        batch::{check_batch, checked_shapes, one, sharded_loss, Batch, SamplingConfig, ShardLoss},
        kl::velocity_kl,
        sft::{Sft, SftConfig, SftData},
    },
    policy::{Policy, PolicyOptimizer},
    prompts::PromptSet,
};

/// Settings of PRFL: no-grad rollout to a random step `s`, `window` steps with gradients, a
/// process reward on the noisy latent at its timestep, `lambda * relu(margin - r)`, alternating
/// with SFT flow-matching steps on real latents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrflConfig {
    /// Prompts (videos) per step.
    pub batch: usize,
    /// The rollouts' sampler.
    pub sampling: SamplingConfig,
    /// Range `[a, b)` of the step `s` where the gradient window starts; `None`: the release's
    /// `[0, S - K)`. Leaving out the first, near-pure-noise steps keeps the policy away from
    /// where a process reward model is at chance and its gradient arbitrary.
    #[serde(default)]
    pub start: Option<[usize; 2]>,
    /// Steps with gradients (`K >= 1`; the release uses 1).
    pub window: usize,
    /// Loss weight (release: 0.1).
    pub lambda: f64,
    /// Hinge margin of `relu(margin - r)` (release: 2, so the loss never saturates for a
    /// sigmoid reward).
    pub margin: f64,
    /// An SFT step every this many reward steps (0: none; release: every step).
    pub sft_every: usize,
    /// Weight of a KL term to the initial model at the graded latent, as VELR's (0: none, the
    /// release; the term costs one more forward of the policy and of the initial model).
    #[serde(default)]
    pub kl_beta: f64,
    /// Batch shards whose forward and backward run side by side on their own threads
    /// (`diffusion_core::train::parallel::sharded_grads`); 1: one graph on the calling thread.
    #[serde(default = "one")]
    pub shards: usize,
}

impl Default for PrflConfig {
    /// The release's settings: 40 steps at shift 5, `s` uniform in `[0, S - 1)`, one step with
    /// gradients, `0.1 * relu(2 - r)`, an SFT step after every reward step, no KL.
    fn default() -> Self {
        Self {
            batch: 1,
            sampling: SamplingConfig::default(),
            start: None,
            window: 1,
            lambda: 0.1,
            margin: 2.0,
            sft_every: 1,
            kl_beta: 0.0,
            shards: 1,
        }
    }
}

impl PrflConfig {
    /// Checks every value, naming the first bad field (under `prfl.`).
    ///
    /// # Errors
    /// `Config` naming the field.
    pub fn validate(&self) -> Result<()> {
        check_batch("prfl", self.batch, self.shards)?;
        self.sampling.schedule("prfl.sampling")?;
        let s = self.sampling.steps;
        // s is drawn from [0, S - 1 - K]: the window must leave at least one step
        if self.window == 0 || self.window >= s {
            return Err(config_error(
                "prfl.window",
                format!("{} not in 1..{s}", self.window),
            ));
        }
        if let Some([a, b]) = self.start {
            if a >= b || b + self.window > s {
                return Err(config_error(
                    "prfl.start",
                    format!(
                        "[{a}, {b}) plus a window of {} must fit {s} steps",
                        self.window
                    ),
                ));
            }
        }
        for (field, v) in [("prfl.lambda", self.lambda), ("prfl.margin", self.margin)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(config_error(field, format!("{v} must be finite and > 0")));
            }
        }
        if !(self.kl_beta >= 0.0 && self.kl_beta.is_finite()) {
            return Err(config_error("prfl.kl_beta", "must be >= 0 and finite"));
        }
        Ok(())
    }
}

/// PRFL ("Video Generation Models Are Good Latent Reward Models", section 3.3) with any
/// [`LatentReward`] as the process reward: roll out steps `0..s` without gradients, `K` steps
/// with gradients, score the noisy latent `z_{s+K}` at its noise level,
/// `L = lambda * relu(margin - r)` (`+ kl_beta * KL` to the initial model at `z_{s+K}`), then an
/// SFT step on real latents every `sft_every` steps.
///
/// The reward is not trained here: pass it frozen (`Module::no_grad`) so that no gradient is
/// kept for its parameters.
pub struct Prfl<B: AutodiffBackend, M: Policy<B>, R, P> {
    config: PrflConfig,
    reward: R,
    train: PromptSet<B::InnerBackend, P>,
    latent_shape: [usize; 4],
    sft: Option<Sft<B>>,
    schedule: Schedule,
    reference: Option<M::InnerModule>,
}

impl<B, M, R, P> Prfl<B, M, R, P>
where
    B: AutodiffBackend,
    M: Policy<B>,
    R: LatentReward<B> + Sync,
    P: Clone + Send + Sync,
{
    /// PRFL on the prompts of `train` with videos of latent shape `[C, F, H, W]`; `sft` holds
    /// the real latents of the SFT steps (needed when `sft_every > 0`).
    ///
    /// # Errors
    /// `Config` naming a bad field, or `prfl.sft_every` when SFT steps have no data.
    pub fn new(
        config: PrflConfig,
        reward: R,
        train: PromptSet<B::InnerBackend, P>,
        latent_shape: [usize; 4],
        sft: Option<SftData<B::InnerBackend>>,
    ) -> Result<Self> {
        config.validate()?;
        if config.sft_every > 0 && sft.is_none() {
            return Err(config_error(
                "prfl.sft_every",
                "SFT steps need real latents (`sft`)",
            ));
        }
        let sft = sft
            .map(|data| {
                let c = SftConfig {
                    batch: config.batch,
                    timesteps: TimestepSampling::Uniform {
                        shift: config.sampling.shift,
                    },
                    shards: config.shards,
                };
                Sft::new(c, data)
            })
            .transpose()?;
        Ok(Self {
            schedule: config.sampling.schedule("prfl.sampling")?,
            config,
            reward,
            train,
            latent_shape,
            sft,
            reference: None,
        })
    }

    /// The process reward.
    pub fn reward(&self) -> &R {
        &self.reward
    }

    /// The loss on one shard of the batch.
    fn loss(
        &self,
        policy: &M,
        noise: Tensor<B, 5>,
        text: Tensor<B, 3>,
        s: usize,
        seed: u64,
    ) -> Result<ShardLoss<B>> {
        let m = &self.config;
        let traj = Rollout::new(&self.schedule, &EulerOde)
            .with_steps(0..s + m.window)
            .with_window(GradWindow::Range {
                start: s,
                len: m.window,
            })
            .run(policy, noise, &Conditioning::new(text.clone()), seed)?;
        let b = text.dims()[0];
        let sigma = *traj.sigmas.last().unwrap_or(&0.0);
        let sigma = Tensor::full([b], sigma, &text.device());
        let z = traj.last().clone();
        let r = self.reward.score(z.clone(), sigma, text.clone());
        let reward = r.clone().mean().into_scalar().elem::<f64>();
        let mut loss = activation::relu(r.neg().add_scalar(m.margin))
            .mean()
            .mul_scalar(m.lambda);
        // the KL at the graded latent (none after the last step: nothing is left to sample)
        let end = s + m.window;
        let kl = match &self.reference {
            Some(reference) if end < m.sampling.steps => {
                Some(velocity_kl(policy, reference, &self.schedule, z, end, text).1)
            }
            _ => None,
        };
        if let Some(kl) = &kl {
            loss = loss + kl.clone().mul_scalar(m.kl_beta);
        }
        Ok(ShardLoss {
            loss,
            reward,
            kl: kl.map(|kl| kl.into_scalar().elem::<f64>()),
            uncertainty: None,
            graded: None,
        })
    }
}

impl<B, M, R, P> Method<B, M> for Prfl<B, M, R, P>
where
    B: AutodiffBackend,
    M: Policy<B>,
    R: LatentReward<B> + Sync,
    P: Clone + Send + Sync,
{
    fn name(&self) -> &'static str {
        "prfl"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn init(&mut self, policy: &M) -> Result<()> {
        let (latent, text) = checked_shapes(policy, self.latent_shape, &self.train)?;
        self.reward.check_input(latent, text)?;
        if self.config.kl_beta > 0.0 {
            self.reference = Some(policy.valid());
        }
        Ok(())
    }

    fn step(
        &mut self,
        step: usize,
        optim: &mut PolicyOptimizer<B, M>,
        rng: &mut StdRng,
    ) -> Result<StepReport> {
        let cfg = &self.config;
        let device = self.train.text.device();
        let batch = Batch::<B, P>::draw(&self.train, cfg.batch, self.latent_shape, rng, &device);
        let [a, b] = cfg.start.unwrap_or([0, cfg.sampling.steps - cfg.window]);
        let start = rng.random_range(a..b);
        let (grads, out) = sharded_loss(optim.policy(), cfg.batch, cfg.shards, |policy, rows| {
            let (a, n) = (rows.start, rows.len());
            self.loss(
                policy,
                batch.noise.clone().narrow(0, a, n),
                batch.text.clone().narrow(0, a, n),
                start,
                batch.seed,
            )
        })?;
        let update = optim.apply(grads, out.value)?;
        let mut sft_loss = None;
        if let Some(sft) = &self.sft {
            if cfg.sft_every > 0 && step % cfg.sft_every == 0 {
                let (grads, value) = sft.grads(optim.policy(), rng)?;
                sft_loss = Some(optim.apply(grads, value)?.loss);
            }
        }
        Ok(StepReport {
            update: Some(update),
            reward: Some(out.reward),
            kl: out.kl,
            sft_loss,
            ..StepReport::default()
        })
    }
}
