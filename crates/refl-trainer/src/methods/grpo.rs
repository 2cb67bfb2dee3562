//! GRPO for flow models as a [`Method`] (Flow-GRPO, arXiv 2505.05470; DanceGRPO,
//! arXiv 2505.07818): the update's gradients come from [`grpo::grpo_gradients`].

use burn::tensor::backend::AutodiffBackend;
use grpo::{grpo_gradients, GrpoConfig};
use rand::{rngs::StdRng, Rng};

use crate::{
    checkpoint::{CheckpointReader, CheckpointWriter},
    error::{config_error, Result},
    method::{Method, StepReport},
    methods::{
        aligned_ensemble::{GrpoReward, GrpoRollouts},
        batch::checked_shapes,
    },
    policy::{Policy, PolicyOptimizer},
    prompts::PromptSet,
};

/// GRPO with any [`GrpoReward`] (a latent reward, an ensemble with an uncertainty penalty, a
/// decoded pixel reward, a latent ensemble aligned on the rollouts): `config.prompts` prompts
/// drawn from `train` per update, `group` rollouts each, the clipped surrogate plus the KL to
/// the initial policy.
pub struct Grpo<B: AutodiffBackend, M: Policy<B>, G, P> {
    config: GrpoConfig,
    reward: G,
    train: PromptSet<B::InnerBackend, P>,
    latent_shape: [usize; 4],
    reference: Option<M::InnerModule>,
    last_samples: Option<burn::tensor::Tensor<B::InnerBackend, 5>>,
}

impl<B, M, G, P> Grpo<B, M, G, P>
where
    B: AutodiffBackend,
    M: Policy<B>,
    G: GrpoReward<B::InnerBackend, P>,
    P: Clone,
{
    /// GRPO on the prompts of `train` with videos of latent shape `[C, F, H, W]`.
    ///
    /// # Errors
    /// `Grpo(Invalid)` naming a bad setting.
    pub fn new(
        config: GrpoConfig,
        reward: G,
        train: PromptSet<B::InnerBackend, P>,
        latent_shape: [usize; 4],
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            reward,
            train,
            latent_shape,
            reference: None,
            last_samples: None,
        })
    }

    /// The reward.
    pub fn reward(&self) -> &G {
        &self.reward
    }

    /// The reward, for changes between steps (a latent ensemble aligned on the rollouts).
    pub fn reward_mut(&mut self) -> &mut G {
        &mut self.reward
    }

    /// The final latents of the last step's rollouts (what its reward scored); `None` before
    /// the first step.
    ///
    /// # Shapes
    /// - `[N * G, C, F, H, W]`: prompt after prompt, the `G` rollouts of each together
    pub fn last_samples(&self) -> Option<&burn::tensor::Tensor<B::InnerBackend, 5>> {
        self.last_samples.as_ref()
    }
}

impl<B, M, G, P> Method<B, M> for Grpo<B, M, G, P>
where
    B: AutodiffBackend,
    M: Policy<B>,
    G: GrpoReward<B::InnerBackend, P>,
    P: Clone,
{
    fn name(&self) -> &'static str {
        "grpo"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn init(&mut self, policy: &M) -> Result<()> {
        checked_shapes(policy, self.latent_shape, &self.train)?;
        self.reference = Some(policy.valid());
        Ok(())
    }

    fn step(
        &mut self,
        step: usize,
        optim: &mut PolicyOptimizer<B, M>,
        rng: &mut StdRng,
    ) -> Result<StepReport> {
        let idx: Vec<usize> = (0..self.config.prompts)
            .map(|_| rng.random_range(0..self.train.len()))
            .collect();
        let (prompts, text) = self.train.batch(&idx);
        let reference = self
            .reference
            .as_ref()
            .ok_or_else(|| config_error("grpo", "the learner calls `init` before a step"))?;
        let out = grpo_gradients(
            &self.config,
            optim.policy(),
            reference,
            &prompts,
            text,
            self.latent_shape,
            &self.reward,
            rng,
        )?;
        let s = out.stats;
        let update = optim.apply(out.grads, s.loss)?;
        let g = self.config.group;
        let rows: Vec<usize> = idx
            .iter()
            .flat_map(|&i| std::iter::repeat_n(i, g))
            .collect();
        let row_prompts: Vec<P> = rows
            .iter()
            .map(|&i| self.train.prompts[i].clone())
            .collect();
        let rollouts = GrpoRollouts {
            samples: out.samples.clone(),
            idx: &rows,
            prompts: &row_prompts,
            train: &self.train,
            group: g,
        };
        let mut extra = self.reward.after_update(step, &rollouts, rng)?;
        extra.extend([
            ("reward_std".to_string(), s.reward_std),
            ("clip_fraction".to_string(), s.clip_fraction),
            ("trained_steps".to_string(), s.trained_steps as f64),
        ]);
        self.last_samples = Some(out.samples);
        Ok(StepReport {
            update: Some(update),
            reward: Some(s.reward),
            kl: Some(s.kl),
            extra,
            ..StepReport::default()
        })
    }

    fn save(&self, checkpoint: &mut CheckpointWriter) -> Result<()> {
        self.reward.save(checkpoint)
    }

    fn load(&mut self, checkpoint: &CheckpointReader, device: &B::Device) -> Result<()> {
        self.reward.load(checkpoint, device, self.train.len())
    }
}
