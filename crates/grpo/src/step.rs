//! The GRPO training step for a Wan-architecture flow model: group rollouts with an SDE and
//! per-step log-probs, group-relative advantages, then the clipped surrogate plus KL to the frozen
//! initial model, re-evaluating the policy at one selected timestep at a time (Flow-GRPO, arXiv
//! 2505.05470; DanceGRPO; Flash-GRPO's iso-temporal selection and rectification).

use burn::{
    module::AutodiffModule,
    optim::{GradientsAccumulator, GradientsParams},
    tensor::{backend::AutodiffBackend, backend::Backend, ElementConversion, Tensor, TensorData},
};
use diffusion_core::{
    sampling::rollout::randn,
    sampling::stepper::{gaussian_log_prob, Transition},
    train::parallel::{shard_rows, sharded_grads},
    Conditioning, DanceGrpoSde, FlowGrpoSde, FlowMatchScheduleConfig, LogProbReduction, Rollout,
    Stepper, VelocityModel,
};
use rand::{rngs::StdRng, Rng};
use serde::{Deserialize, Serialize};

use crate::{
    advantage::{group_advantages, AdvantageConfig},
    error::{invalid, GrpoError, Result},
    loss::{clipped_surrogate, transition_kl},
    reward::GroupReward,
    timesteps::{rectification, TimestepSelection},
};

/// The SDE the rollouts sample with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Sde {
    /// Flow-GRPO's marginal-preserving SDE.
    FlowGrpo(FlowGrpoSde),
    /// DanceGRPO's SDE.
    DanceGrpo(DanceGrpoSde),
}

/// The rollout stepper: the SDE at the trained steps' noise levels (every step, unless the
/// selection is iso-temporal), the Euler ODE elsewhere.
struct MixedStepper {
    sde: Sde,
    /// Noise levels at which the SDE is used; `None`: everywhere.
    sde_at: Option<Vec<f64>>,
}

impl Stepper for MixedStepper {
    fn transition<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        v: Tensor<B, D>,
        sigma: f64,
        sigma_next: f64,
    ) -> Transition<B, D> {
        let stochastic = self.sde_at.as_ref().is_none_or(|s| s.contains(&sigma));
        match (stochastic, self.sde) {
            (false, _) => diffusion_core::EulerOde.transition(x, v, sigma, sigma_next),
            (true, Sde::FlowGrpo(s)) => s.transition(x, v, sigma, sigma_next),
            (true, Sde::DanceGrpo(s)) => s.transition(x, v, sigma, sigma_next),
        }
    }

    fn is_stochastic(&self) -> bool {
        true
    }

    fn reduction(&self) -> LogProbReduction {
        match self.sde {
            Sde::FlowGrpo(s) => s.reduction,
            Sde::DanceGrpo(s) => s.reduction,
        }
    }
}

/// Settings of GRPO for flow models (Flow-GRPO, arXiv 2505.05470; DanceGRPO, arXiv 2505.07818):
/// what one update samples and optimises. The optimiser (learning rate, weight decay, clipping)
/// and the seed belong to the run (`refl_trainer::LearnerConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoConfig {
    /// Prompts per update; each gets `group` rollouts.
    #[serde(default = "one")]
    pub prompts: usize,
    /// Rollouts per prompt `G`.
    pub group: usize,
    /// Sampling steps of a rollout.
    pub steps: usize,
    /// Schedule shift.
    pub shift: f64,
    /// The SDE.
    pub sde: Sde,
    /// All members of a group start from the same noise (DanceGRPO).
    pub shared_noise: bool,
    /// Rewards to advantages.
    pub advantage: AdvantageConfig,
    /// PPO clip range `eps` (Flow-GRPO 1e-4; Flash-GRPO 1e-3).
    pub clip: f64,
    /// KL weight to the frozen initial model.
    pub kl_beta: f64,
    /// Which steps are trained.
    pub timesteps: TimestepSelection,
    /// Weight each trained step by Flash-GRPO's temporal gradient rectification (needs the
    /// Flow-GRPO SDE).
    pub rectify: bool,
    /// Shards of the group's rows whose re-evaluation of a trained step runs side by side on
    /// their own threads (`diffusion_core::train::parallel::sharded_grads`); 1: one graph.
    #[serde(default = "one")]
    pub shards: usize,
}

impl Default for GrpoConfig {
    /// Flow-GRPO's settings (arXiv 2505.05470): groups of 16 from independent noise, 10 SDE
    /// steps at shift 3, per-group advantages, clip 1e-4, KL weight 0.04, 60% of the steps
    /// trained.
    fn default() -> Self {
        Self {
            prompts: 1,
            group: 16,
            steps: 10,
            shift: 3.0,
            sde: Sde::FlowGrpo(FlowGrpoSde::default()),
            shared_noise: false,
            advantage: AdvantageConfig::default(),
            clip: 1e-4,
            kl_beta: 0.04,
            timesteps: TimestepSelection::All,
            rectify: false,
            shards: 1,
        }
    }
}

fn one() -> usize {
    1
}

impl GrpoConfig {
    /// Checks the settings, naming the field at fault.
    ///
    /// # Errors
    /// `Invalid` with the field's name.
    pub fn validate(&self) -> Result<()> {
        if self.group < 2 {
            return Err(invalid("group", "needs at least 2 rollouts per prompt"));
        }
        if self.shards == 0 {
            return Err(invalid("shards", "must be at least 1"));
        }
        if self.steps < 2 {
            return Err(invalid("steps", "needs at least 2 sampling steps"));
        }
        if self.prompts == 0 {
            return Err(invalid("prompts", "must be at least 1"));
        }
        if !(self.clip > 0.0 && self.clip.is_finite()) {
            return Err(invalid(
                "clip",
                format!("{} must be finite and > 0", self.clip),
            ));
        }
        if !(self.kl_beta >= 0.0 && self.kl_beta.is_finite()) {
            return Err(invalid(
                "kl_beta",
                format!("{} must be finite and >= 0", self.kl_beta),
            ));
        }
        if !(self.shift > 0.0 && self.shift.is_finite()) {
            return Err(invalid(
                "shift",
                format!("{} must be finite and > 0", self.shift),
            ));
        }
        if self.rectify && !matches!(self.sde, Sde::FlowGrpo(_)) {
            return Err(invalid(
                "rectify",
                "rectification is defined for the Flow-GRPO SDE",
            ));
        }
        Ok(())
    }
}

/// What one GRPO update measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoStats {
    /// Mean reward of the rollouts.
    pub reward: f64,
    /// Mean within-group std of the rewards.
    pub reward_std: f64,
    /// The loss: the surrogate plus the KL term, summed over the trained steps' means.
    pub loss: f64,
    /// Mean KL to the reference over the trained steps.
    pub kl: f64,
    /// Fraction of (sample, step) ratios outside the clip range.
    pub clip_fraction: f64,
    /// Steps trained.
    pub trained_steps: usize,
}

/// The gradients of one GRPO update and what it measured.
pub struct GrpoGradients<B: AutodiffBackend> {
    /// Gradients of the loss with respect to the policy's parameters (empty when the rewards
    /// or the loss were not finite: then `stats.loss` is not finite either).
    pub grads: GradientsParams,
    /// What the update measured.
    pub stats: GrpoStats,
    /// The final latents of the rollouts (what the reward scored), for online alignment of a
    /// latent reward ("VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models", section 4.3).
    ///
    /// # Shapes
    /// - `[N * G, C, F, H, W]`: prompt after prompt, the `G` rollouts of each together
    pub samples: Tensor<B::InnerBackend, 5>,
}

/// One GRPO update's gradients: `G` SDE rollouts per prompt without gradients (log-probs at
/// every SDE step), group-relative advantages of their rewards, then the clipped surrogate plus
/// the KL to `reference` at one trained step at a time (the memory of one step; gradients
/// accumulated over the trained steps). Flow-GRPO (arXiv 2505.05470), DanceGRPO
/// (arXiv 2505.07818), Flash-GRPO's iso-temporal selection and rectification.
///
/// Every random draw comes from `rng`.
///
/// # Shapes
/// - `text`: `[N, S, D]` embeddings of the `N` prompts; `latent_shape`: `[C, F, H, W]`
///
/// # Errors
/// `Invalid` for bad settings or shapes; errors of the model, schedule or reward.
#[allow(clippy::too_many_arguments)]
pub fn grpo_gradients<B, M, P, R>(
    config: &GrpoConfig,
    policy: &M,
    reference: &M::InnerModule,
    prompts: &[P],
    text: Tensor<B::InnerBackend, 3>,
    latent_shape: [usize; 4],
    reward: &R,
    rng: &mut StdRng,
) -> Result<GrpoGradients<B>>
where
    B: AutodiffBackend,
    M: VelocityModel<B> + AutodiffModule<B> + Send + Sync,
    M::InnerModule: VelocityModel<B::InnerBackend> + Sync,
    P: Clone,
    R: GroupReward<B::InnerBackend, P> + ?Sized,
{
    config.validate()?;
    let cfg = config;
    let schedule = FlowMatchScheduleConfig::new(cfg.steps)
        .with_shift(cfg.shift)
        .init()
        .map_err(GrpoError::Core)?;
    let n = prompts.len();
    if n == 0 || text.dims()[0] != n {
        return Err(invalid(
            "prompts",
            format!("{n} prompts for {} embeddings", text.dims()[0]),
        ));
    }
    let g = cfg.group;
    let device = text.device();
    // each prompt repeated G times, group after group
    let rep: Vec<i64> = (0..n * g).map(|i| (i / g) as i64).collect();
    let rep = Tensor::<B::InnerBackend, 1, burn::tensor::Int>::from_data(
        TensorData::new(rep, [n * g]),
        &device,
    );
    let text = text.select(0, rep);
    let prompts_rep: Vec<P> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), g))
        .collect();
    let [c, f, h, w] = latent_shape;
    let noise = if cfg.shared_noise {
        let z = randn::<B::InnerBackend, 5>([n, 1, c * f, h, w], rng, &device);
        z.repeat_dim(1, g).reshape([n * g, c, f, h, w])
    } else {
        randn::<B::InnerBackend, 5>([n * g, c, f, h, w], rng, &device)
    };

    // rollouts without gradients, with log-probs at every SDE step
    let trained = cfg.timesteps.select(cfg.steps, rng)?;
    let sigmas = schedule.sigmas().to_vec();
    let stepper = MixedStepper {
        sde: cfg.sde,
        sde_at: matches!(cfg.timesteps, TimestepSelection::IsoTemporal { .. })
            .then(|| trained.iter().map(|&t| sigmas[t]).collect()),
    };
    let cond = Conditioning::new(text.clone());
    let traj = Rollout::new(&schedule, &stepper)
        .sample(&policy.valid(), noise, &cond, rng.random())
        .map_err(GrpoError::Core)?;
    let samples = traj.last().clone();
    let rewards = reward.rewards(samples.clone(), &prompts_rep, text.clone())?;
    let rewards: Vec<f32> = rewards
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| invalid("rewards", format!("{e:?}")))?;
    let mean_reward = rewards.iter().map(|r| *r as f64).sum::<f64>() / rewards.len() as f64;
    let mut stats = GrpoStats {
        reward: mean_reward,
        reward_std: rewards
            .chunks(g)
            .map(|r| {
                let m = r.iter().sum::<f32>() / g as f32;
                (r.iter().map(|x| (x - m).powi(2)).sum::<f32>() / g as f32).sqrt() as f64
            })
            .sum::<f64>()
            / n as f64,
        loss: f64::NAN,
        kl: f64::NAN,
        clip_fraction: 0.0,
        trained_steps: trained.len(),
    };
    if !mean_reward.is_finite() {
        // nothing to learn from: the caller's guard counts the step
        return Ok(GrpoGradients {
            grads: GradientsParams::new(),
            stats,
            samples,
        });
    }
    let adv = group_advantages(&rewards, g, &cfg.advantage)?;
    let adv = Tensor::<B, 1>::from_data(TensorData::new(adv, [n * g]), &device);

    // the policy re-evaluated one trained step at a time; gradients accumulated
    let weights = match (cfg.rectify, cfg.sde) {
        (true, Sde::FlowGrpo(sde)) => rectification(&sde, &sigmas, &trained)?,
        (true, Sde::DanceGrpo(_)) => {
            return Err(invalid(
                "rectify",
                "rectification is defined for the Flow-GRPO SDE",
            ))
        }
        (false, _) => vec![1.0; trained.len()],
    };
    let text_ad = Tensor::<B, 3>::from_inner(text);
    let mut acc = GradientsAccumulator::new();
    let (mut loss_sum, mut kl_sum, mut clipped) = (0.0, 0.0, 0usize);
    for (&t, &weight) in trained.iter().zip(&weights) {
        let (sigma, sigma_next, timestep) = schedule
            .step(t)
            .ok_or_else(|| invalid("timesteps", format!("step {t} of {}", cfg.steps)))?;
        let x = traj.latents[t].clone();
        let x_next = traj.latents[t + 1].clone();
        let old = traj.log_probs[t]
            .clone()
            .ok_or_else(|| invalid("timesteps", format!("step {t} was not an SDE step")))?;
        // the group's rows in shards on their own threads (one graph per shard)
        let rows = n * g;
        let shards = cfg.shards.min(rows);
        let (grads, outs) = sharded_grads(policy, shards, |policy, i| {
            let r = shard_rows(rows, shards, i);
            let (a, m) = (r.start, r.len());
            let x = x.clone().narrow(0, a, m);
            let text = text_ad.clone().narrow(0, a, m);
            let ts = Tensor::<B, 1>::full([m], timestep, &device);
            let x_ad = Tensor::<B, 5>::from_inner(x.clone());
            let v = policy.velocity(x_ad.clone(), ts, text.clone());
            let tr = stepper.transition(x_ad, v, sigma, sigma_next);
            let ref_v = reference.velocity(
                x.clone(),
                Tensor::full([m], timestep, &device),
                text.inner(),
            );
            let ref_mean = stepper.transition(x, ref_v, sigma, sigma_next).mean;
            let log_prob = gaussian_log_prob(
                Tensor::from_inner(x_next.clone().narrow(0, a, m)),
                tr.mean.clone(),
                tr.std,
                stepper.reduction(),
            );
            let old = Tensor::<B, 1>::from_inner(old.clone().narrow(0, a, m));
            let ratio: Vec<f32> = (log_prob.clone().inner() - old.clone().inner())
                .exp()
                .into_data()
                .convert::<f32>()
                .to_vec()
                .map_err(|e| invalid("ratio", format!("{e:?}")))?;
            let clipped = ratio
                .iter()
                .filter(|r| (**r as f64 - 1.0).abs() > cfg.clip)
                .count();
            let kl = transition_kl(
                tr.mean,
                Tensor::from_inner(ref_mean),
                tr.std,
                stepper.reduction(),
            )
            .mean();
            // the shard's share of the step's mean over all rows
            let share = m as f64 / rows as f64;
            let surrogate = clipped_surrogate(log_prob, old, adv.clone().narrow(0, a, m), cfg.clip);
            let loss = (surrogate.mul_scalar(weight) + kl.clone().mul_scalar(cfg.kl_beta))
                .mul_scalar(share / trained.len() as f64);
            let value = loss.clone().into_scalar().elem::<f64>();
            let kl = kl.into_scalar().elem::<f64>() * share;
            Ok::<_, GrpoError>((loss, (value, kl, clipped)))
        })?;
        loss_sum += outs.iter().map(|o| o.0).sum::<f64>();
        kl_sum += outs.iter().map(|o| o.1).sum::<f64>();
        clipped += outs.iter().map(|o| o.2).sum::<usize>();
        acc.accumulate(policy, grads);
    }
    stats.loss = loss_sum;
    stats.kl = kl_sum / trained.len() as f64;
    stats.clip_fraction = clipped as f64 / (trained.len() * n * g) as f64;
    Ok(GrpoGradients {
        grads: acc.grads(),
        stats,
        samples,
    })
}
