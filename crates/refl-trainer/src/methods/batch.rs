//! The batch a ReFL step samples: prompts, their embeddings and starting noise.

use burn::{
    optim::GradientsParams,
    tensor::{
        backend::{AutodiffBackend, Backend},
        ElementConversion, Tensor,
    },
};
use diffusion_core::{
    sampling::rollout::randn,
    train::parallel::{shard_rows, sharded_grads},
    FlowMatchScheduleConfig, Schedule,
};
use rand::{rngs::StdRng, Rng};
use serde::{Deserialize, Serialize};

use crate::{
    error::{config_error, Result, TrainError},
    policy::Policy,
    prompts::PromptSet,
};

/// The sampler of a method's rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Denoising steps (PRFL release: 40).
    pub steps: usize,
    /// Timestep shift (PRFL release: 5).
    pub shift: f64,
}

impl Default for SamplingConfig {
    /// The PRFL release's sampler: 40 steps at shift 5.
    fn default() -> Self {
        Self {
            steps: 40,
            shift: 5.0,
        }
    }
}

/// The largest number of sampling steps accepted.
pub const MAX_SAMPLING_STEPS: usize = 10_000;

impl SamplingConfig {
    /// The flow-matching schedule of these settings.
    ///
    /// # Errors
    /// `Config` naming `{prefix}.steps` or `{prefix}.shift`.
    pub fn schedule(&self, prefix: &str) -> Result<Schedule> {
        if self.steps == 0 || self.steps > MAX_SAMPLING_STEPS {
            return Err(config_error(
                format!("{prefix}.steps"),
                format!("{} not in 1..={MAX_SAMPLING_STEPS}", self.steps),
            ));
        }
        if !(self.shift > 0.0 && self.shift.is_finite()) {
            return Err(config_error(
                format!("{prefix}.shift"),
                format!("{} must be finite and > 0", self.shift),
            ));
        }
        Ok(FlowMatchScheduleConfig::new(self.steps)
            .with_shift(self.shift)
            .init()?)
    }
}

/// One shard: the default of every method's `shards`.
pub(crate) fn one() -> usize {
    1
}

/// The shapes of one video's latent and one prompt's embeddings, `[1, C, F, H, W]` and
/// `[1, S, D]`, after checking that `policy` takes them.
pub(crate) fn checked_shapes<B: AutodiffBackend, M: Policy<B>, P>(
    policy: &M,
    latent_shape: [usize; 4],
    train: &PromptSet<B::InnerBackend, P>,
) -> Result<([usize; 5], [usize; 3])> {
    let [c, f, h, w] = latent_shape;
    let [_, s, d] = train.text.dims();
    let shapes = ([1, c, f, h, w], [1, s, d]);
    policy.check_input(shapes.0, shapes.1)?;
    Ok(shapes)
}

/// The largest batch accepted; a larger one would exhaust memory before its first step.
pub const MAX_BATCH: usize = 4096;

/// Checks a batch size and a shard count, naming the fields under `prefix`.
pub(crate) fn check_batch(prefix: &str, batch: usize, shards: usize) -> Result<()> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(config_error(
            format!("{prefix}.batch"),
            format!("{batch} not in 1..={MAX_BATCH}"),
        ));
    }
    if shards == 0 {
        return Err(config_error(
            format!("{prefix}.shards"),
            "must be at least 1",
        ));
    }
    Ok(())
}

/// One step's draw: prompt indices, prompts, embeddings, starting noise and the rollout's
/// noise seed, drawn from the step's generator in this order.
pub(crate) struct Batch<B: AutodiffBackend, P> {
    pub idx: Vec<usize>,
    pub prompts: Vec<P>,
    /// `[N, S, D]`
    pub text: Tensor<B, 3>,
    /// `[N, C, F, H, W]`
    pub noise: Tensor<B, 5>,
    pub seed: u64,
}

impl<B: AutodiffBackend, P: Clone> Batch<B, P> {
    pub(crate) fn draw(
        train: &PromptSet<B::InnerBackend, P>,
        batch: usize,
        latent_shape: [usize; 4],
        rng: &mut StdRng,
        device: &B::Device,
    ) -> Self {
        let idx: Vec<usize> = (0..batch)
            .map(|_| rng.random_range(0..train.len()))
            .collect();
        let (prompts, text) = train.batch(&idx);
        let [c, f, h, w] = latent_shape;
        let noise = randn::<B, 5>([batch, c, f, h, w], rng, device);
        Self {
            idx,
            prompts,
            text: Tensor::from_inner(text),
            noise,
            seed: rng.random::<u64>(),
        }
    }
}

/// What one shard's loss produced (see [`sharded_loss`]).
pub(crate) struct ShardLoss<B: AutodiffBackend> {
    /// The shard's loss, a mean over its rows.
    pub loss: Tensor<B, 1>,
    /// Mean reward of its rows.
    pub reward: f64,
    pub kl: Option<f64>,
    pub uncertainty: Option<f64>,
    /// VELR: the graded latents and the ensemble's variance on each, for the replay buffer.
    pub graded: Option<(Tensor<B::InnerBackend, 5>, Vec<f32>)>,
}

/// The whole batch's report: loss values summed, means weighted by the shards' shares, graded
/// latents concatenated in shard order.
pub(crate) struct BatchLoss<B: Backend> {
    pub value: f64,
    pub reward: f64,
    pub kl: Option<f64>,
    pub uncertainty: Option<f64>,
    pub graded: Option<(Tensor<B, 5>, Vec<f32>)>,
}

/// The gradients of a batch mean of `shard`'s losses over rows `0..batch`, computed in
/// `shards` shards on their own threads ([`sharded_grads`]), and the batch's report.
pub(crate) fn sharded_loss<B, M, F>(
    policy: &M,
    batch: usize,
    shards: usize,
    shard: F,
) -> Result<(GradientsParams, BatchLoss<B::InnerBackend>)>
where
    B: AutodiffBackend,
    M: Policy<B>,
    F: Fn(&M, std::ops::Range<usize>) -> Result<ShardLoss<B>> + Sync,
{
    let shards = shards.min(batch);
    let (grads, outs) = sharded_grads(policy, shards, |policy, i| {
        let rows = shard_rows(batch, shards, i);
        // the shard's share of the batch mean
        let weight = rows.len() as f64 / batch as f64;
        let out = shard(policy, rows)?;
        let loss = out.loss.mul_scalar(weight);
        let value = loss.clone().into_scalar().elem::<f64>();
        let weighted = BatchLoss {
            value,
            reward: out.reward * weight,
            kl: out.kl.map(|v| v * weight),
            uncertainty: out.uncertainty.map(|v| v * weight),
            graded: out.graded,
        };
        Ok::<_, TrainError>((loss, weighted))
    })?;
    let sum = |f: &dyn Fn(&BatchLoss<B::InnerBackend>) -> Option<f64>| -> Option<f64> {
        outs.iter().map(f).sum::<Option<f64>>()
    };
    let (value, reward, kl, uncertainty) = (
        sum(&|s| Some(s.value)).unwrap_or(f64::NAN),
        sum(&|s| Some(s.reward)).unwrap_or(f64::NAN),
        sum(&|s| s.kl),
        sum(&|s| s.uncertainty),
    );
    let graded: Option<Vec<_>> = outs.into_iter().map(|s| s.graded).collect();
    let graded = graded.map(|parts| {
        let (latents, variances): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        (Tensor::cat(latents, 0), variances.concat())
    });
    Ok((
        grads,
        BatchLoss {
            value,
            reward,
            kl,
            uncertainty,
            graded,
        },
    ))
}
