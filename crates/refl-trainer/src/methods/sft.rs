//! Supervised fine-tuning with the flow-matching loss on real latents (arXiv 2604.25427,
//! stage 1), and the SFT half of PRFL's alternating update.

use burn::{
    optim::GradientsParams,
    tensor::{
        backend::AutodiffBackend, backend::Backend, ElementConversion, Int, Tensor, TensorData,
    },
};
use diffusion_core::{
    sampling::rollout::randn,
    train::loss::{flow_matching_loss, TimestepSampling},
    train::parallel::{shard_rows, sharded_grads},
};
use rand::{rngs::StdRng, Rng};
use serde::{Deserialize, Serialize};

use crate::{
    error::{config_error, Result, TrainError},
    method::{Method, StepReport},
    methods::batch::{check_batch, one},
    policy::{Policy, PolicyOptimizer},
};

/// Real latents with their prompts' embeddings: SFT's data.
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
    /// Pairs latents with embeddings.
    ///
    /// # Errors
    /// `Config` when the counts differ or the set is empty.
    pub fn new(latents: Tensor<B, 5>, text: Tensor<B, 3>) -> Result<Self> {
        let (n, m) = (latents.dims()[0], text.dims()[0]);
        if n == 0 || n != m {
            return Err(config_error(
                "sft",
                format!("{n} latents with {m} embeddings"),
            ));
        }
        Ok(Self { latents, text })
    }

    /// The latents and embeddings at `idx` (repeats allowed).
    pub fn batch(&self, idx: &[usize]) -> (Tensor<B, 5>, Tensor<B, 3>) {
        let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let i = Tensor::<B, 1, Int>::from_data(
            TensorData::new(ids, [idx.len()]),
            &self.latents.device(),
        );
        (
            self.latents.clone().select(0, i.clone()),
            self.text.clone().select(0, i),
        )
    }
}

/// Settings of SFT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Latents per step.
    pub batch: usize,
    /// How the noise levels are drawn.
    pub timesteps: TimestepSampling,
    /// Batch shards whose forward and backward run side by side on their own threads.
    #[serde(default = "one")]
    pub shards: usize,
}

impl Default for SftConfig {
    /// SD3's logit-normal noise levels with Wan2.1's 480p training shift (5), 4 latents per
    /// step.
    fn default() -> Self {
        Self {
            batch: 4,
            timesteps: TimestepSampling::LogitNormal {
                mean: 0.0,
                std: 1.0,
                shift: 5.0,
            },
            shards: 1,
        }
    }
}

impl SftConfig {
    /// Checks every value, naming fields under `prefix`.
    ///
    /// # Errors
    /// `Config` naming the first bad field.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        check_batch(prefix, self.batch, self.shards)?;
        let (shift, spread) = match self.timesteps {
            TimestepSampling::Uniform { shift } => (shift, 1.0),
            TimestepSampling::LogitNormal { mean, std, shift } => {
                if !mean.is_finite() {
                    return Err(config_error(
                        format!("{prefix}.timesteps.mean"),
                        format!("{mean} must be finite"),
                    ));
                }
                (shift, std)
            }
        };
        if !(shift > 0.0 && shift.is_finite()) {
            return Err(config_error(
                format!("{prefix}.timesteps.shift"),
                format!("{shift} must be finite and > 0"),
            ));
        }
        if !(spread > 0.0 && spread.is_finite()) {
            return Err(config_error(
                format!("{prefix}.timesteps.std"),
                format!("{spread} must be finite and > 0"),
            ));
        }
        Ok(())
    }
}

/// Supervised fine-tuning: `L = || v_theta(x_t, t) - (eps - x0) ||^2` on real latents.
#[derive(Debug, Clone)]
pub struct Sft<B: AutodiffBackend> {
    config: SftConfig,
    data: SftData<B::InnerBackend>,
}

impl<B: AutodiffBackend> Sft<B> {
    /// SFT on `data`.
    ///
    /// # Errors
    /// `Config` for bad settings.
    pub fn new(config: SftConfig, data: SftData<B::InnerBackend>) -> Result<Self> {
        config.validate("sft")?;
        Ok(Self { config, data })
    }

    /// The gradients and loss value of one flow-matching step on a batch drawn from `rng`
    /// (indices, noise, then timesteps).
    pub(crate) fn grads<M: Policy<B>>(
        &self,
        policy: &M,
        rng: &mut StdRng,
    ) -> Result<(GradientsParams, f64)> {
        let n = self.data.latents.dims()[0];
        let idx: Vec<usize> = (0..self.config.batch)
            .map(|_| rng.random_range(0..n))
            .collect();
        let (latents, text) = self.data.batch(&idx);
        let x0 = Tensor::<B, 5>::from_inner(latents);
        let eps = randn(x0.dims(), rng, &x0.device());
        let sigmas = self.config.timesteps.sample(idx.len(), rng);
        let text = Tensor::<B, 3>::from_inner(text);
        let batch = idx.len();
        let shards = self.config.shards.min(batch);
        let (grads, values) = sharded_grads(policy, shards, |policy, i| {
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
        Ok((grads, values.iter().sum()))
    }
}

impl<B: AutodiffBackend, M: Policy<B>> Method<B, M> for Sft<B> {
    fn name(&self) -> &'static str {
        "sft"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn init(&mut self, policy: &M) -> Result<()> {
        let [_, c, f, h, w] = self.data.latents.dims();
        let t = self.data.text.dims();
        Ok(policy.check_input([1, c, f, h, w], [1, t[1], t[2]])?)
    }

    fn step(
        &mut self,
        _step: usize,
        optim: &mut PolicyOptimizer<B, M>,
        rng: &mut StdRng,
    ) -> Result<StepReport> {
        let (grads, loss) = self.grads(optim.policy(), rng)?;
        Ok(StepReport {
            update: Some(optim.apply(grads, loss)?),
            ..StepReport::default()
        })
    }
}
