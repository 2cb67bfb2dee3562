//! The RGB ReFL baseline (ImageReward ReFL; VADER): the final latent decoded by the VAE and
//! scored by a pixel reward.

use burn::tensor::{backend::AutodiffBackend, ElementConversion, Tensor};
use diffusion_core::{
    models::vae::{CheckpointedDecoder, DecoderGradient, LatentNorm},
    Conditioning, EulerOde, GradWindow, Rollout, Schedule,
};
use latent_reward::PixelReward;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::{
    error::{config_error, Result},
    method::{Method, StepReport},
    methods::batch::{
        check_batch, checked_shapes, one, sharded_loss, Batch, SamplingConfig, ShardLoss,
    },
    policy::{Policy, PolicyOptimizer},
    prompts::PromptSet,
};

/// Which frames of the decoded video the RGB ReFL baseline scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameSelection {
    /// Every frame (the full-cost baseline).
    All,
    /// Only the first latent frame, decoded alone (the memory-saving compromise).
    First,
}

/// Settings of RGB ReFL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RgbReflConfig {
    /// Prompts (videos) per step.
    pub batch: usize,
    /// The rollouts' sampler.
    pub sampling: SamplingConfig,
    /// Steps with gradients at the end of the sampled chain (ImageReward: one step drawn from
    /// the last quarter).
    pub window: usize,
    /// Frames decoded and scored.
    pub frames: FrameSelection,
    /// How the gradient goes back through the decoder.
    #[serde(default)]
    pub decoder_gradient: DecoderGradient,
    /// Loss weight: `L = -lambda * r`.
    pub lambda: f64,
    /// Batch shards whose forward and backward run side by side on their own threads.
    #[serde(default = "one")]
    pub shards: usize,
}

impl Default for RgbReflConfig {
    /// One step with gradients at the end of a 40-step chain, every frame decoded, `L = -r`.
    fn default() -> Self {
        Self {
            batch: 1,
            sampling: SamplingConfig::default(),
            window: 1,
            frames: FrameSelection::All,
            decoder_gradient: DecoderGradient::Graph,
            lambda: 1.0,
            shards: 1,
        }
    }
}

impl RgbReflConfig {
    /// Checks every value, naming the first bad field (under `rgb_refl.`).
    ///
    /// # Errors
    /// `Config` naming the field.
    pub fn validate(&self) -> Result<()> {
        check_batch("rgb_refl", self.batch, self.shards)?;
        self.sampling.schedule("rgb_refl.sampling")?;
        let s = self.sampling.steps;
        if self.window == 0 || self.window > s {
            return Err(config_error(
                "rgb_refl.window",
                format!("{} not in 1..={s}", self.window),
            ));
        }
        if !(self.lambda > 0.0 && self.lambda.is_finite()) {
            return Err(config_error(
                "rgb_refl.lambda",
                format!("{} must be finite and > 0", self.lambda),
            ));
        }
        Ok(())
    }
}

/// RGB ReFL: the full chain with the last `window` steps under gradient, the final latent
/// decoded (all frames, or the first latent frame alone) and scored by any [`PixelReward`];
/// `L = -lambda * r`.
///
/// The VAE is not trained here: pass it frozen (`Module::no_grad`).
pub struct RgbRefl<B: AutodiffBackend, V, R, P> {
    config: RgbReflConfig,
    vae: V,
    norm: LatentNorm,
    pixel: R,
    train: PromptSet<B::InnerBackend, P>,
    latent_shape: [usize; 4],
    schedule: Schedule,
}

impl<B, V, R, P> RgbRefl<B, V, R, P>
where
    B: AutodiffBackend,
    V: CheckpointedDecoder<B> + Sync,
    R: PixelReward<B, Prompt = P> + Sync,
    P: Clone + Send + Sync,
{
    /// RGB ReFL on the prompts of `train` with videos of latent shape `[C, F, H, W]`, decoded by
    /// `vae` after undoing the generator's latent normalisation `norm`.
    ///
    /// # Errors
    /// `Config` naming a bad field.
    pub fn new(
        config: RgbReflConfig,
        vae: V,
        norm: LatentNorm,
        pixel: R,
        train: PromptSet<B::InnerBackend, P>,
        latent_shape: [usize; 4],
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            schedule: config.sampling.schedule("rgb_refl.sampling")?,
            config,
            vae,
            norm,
            pixel,
            train,
            latent_shape,
        })
    }

    fn loss<M: Policy<B>>(
        &self,
        policy: &M,
        noise: Tensor<B, 5>,
        text: Tensor<B, 3>,
        prompts: &[P],
        seed: u64,
    ) -> Result<ShardLoss<B>> {
        let m = &self.config;
        let traj = Rollout::new(&self.schedule, &EulerOde)
            .with_window(GradWindow::LastK(m.window))
            .run(policy, noise, &Conditioning::new(text), seed)?;
        let z0 = traj.last().clone();
        let z = match m.frames {
            FrameSelection::All => z0,
            FrameSelection::First => z0.narrow(2, 0, 1),
        };
        // the mean reward, and a loss with value `-lambda r`
        let (r, loss) = match m.decoder_gradient {
            DecoderGradient::Graph => {
                let video = self.norm.decode(&self.vae, z);
                let r = self.pixel.score_pixels(video, prompts)?.mean();
                (r.clone(), r.mul_scalar(-m.lambda))
            }
            DecoderGradient::Checkpointed => {
                let latent = self.norm.denormalize(z);
                let (video, tape) = self.vae.decode_taped(latent.clone());
                let video = video.require_grad();
                let r = self.pixel.score_pixels(video.clone(), prompts)?.mean();
                let grads = r.clone().mul_scalar(-m.lambda).backward();
                let g = video
                    .grad(&grads)
                    .map(Tensor::from_inner)
                    .unwrap_or_else(|| video.zeros_like());
                // its gradient on the latent is the decoder's vector-Jacobian product of the
                // reward's gradient on the video
                let surrogate = (latent * self.vae.decode_vjp(tape, g)).sum();
                let value = r.clone().detach().mul_scalar(-m.lambda);
                (r, surrogate.clone() - surrogate.detach() + value)
            }
        };
        let reward = r.into_scalar().elem::<f64>();
        Ok(ShardLoss {
            loss,
            reward,
            kl: None,
            uncertainty: None,
            graded: None,
        })
    }
}

impl<B, M, V, R, P> Method<B, M> for RgbRefl<B, V, R, P>
where
    B: AutodiffBackend,
    M: Policy<B>,
    V: CheckpointedDecoder<B> + Sync,
    R: PixelReward<B, Prompt = P> + Sync,
    P: Clone + Send + Sync,
{
    fn name(&self) -> &'static str {
        "rgb_refl"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn init(&mut self, policy: &M) -> Result<()> {
        checked_shapes(policy, self.latent_shape, &self.train).map(|_| ())
    }

    fn step(
        &mut self,
        _step: usize,
        optim: &mut PolicyOptimizer<B, M>,
        rng: &mut StdRng,
    ) -> Result<StepReport> {
        let cfg = &self.config;
        let device = self.train.text.device();
        let batch = Batch::<B, P>::draw(&self.train, cfg.batch, self.latent_shape, rng, &device);
        let (grads, out) = sharded_loss(optim.policy(), cfg.batch, cfg.shards, |policy, rows| {
            let (a, n) = (rows.start, rows.len());
            self.loss(
                policy,
                batch.noise.clone().narrow(0, a, n),
                batch.text.clone().narrow(0, a, n),
                &batch.prompts[rows],
                batch.seed,
            )
        })?;
        Ok(StepReport {
            update: Some(optim.apply(grads, out.value)?),
            reward: Some(out.reward),
            ..StepReport::default()
        })
    }
}
