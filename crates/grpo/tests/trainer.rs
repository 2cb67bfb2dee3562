//! The GRPO trainer on the tiny DiT: the reward rises, every parameter that gets a gradient
//! moves, the first step has zero KL and no clipped ratio, and bad rewards are typed errors.

use burn::{
    backend::Autodiff,
    module::AutodiffModule,
    tensor::{backend::Backend, Distribution, Tensor},
};
use diffusion_core::{
    backend::DefaultBackend,
    rollout::randn,
    snapshot::{differing_entries, param_snapshot},
    Conditioning, EulerOde, FlowGrpoSde, FlowMatchScheduleConfig, Rollout, WanConfig,
};
use grpo::*;
use latent_reward::{LatentReward, RewardRange};
use rand::{rngs::StdRng, SeedableRng};

type B = DefaultBackend;
type AD = Autodiff<B>;
const SHAPE: [usize; 4] = [4, 1, 4, 4];

/// Reward: the mean of the latent (or NaN when poisoned).
#[derive(Debug, Clone, Copy)]
struct MeanLatent {
    poison: bool,
}

impl<Bk: Backend> LatentReward<Bk> for MeanLatent {
    fn score(&self, latents: Tensor<Bk, 5>, _: Tensor<Bk, 1>, _: Tensor<Bk, 3>) -> Tensor<Bk, 1> {
        let b = latents.dims()[0];
        let r = latents.reshape([b as i32, -1]).mean_dim(1).reshape([b]);
        if self.poison {
            r.mul_scalar(f32::NAN)
        } else {
            r
        }
    }
    fn range(&self) -> RewardRange {
        RewardRange::Real
    }
    fn check_input(&self, _: [usize; 5], _: [usize; 3]) -> latent_reward::Result<()> {
        Ok(())
    }
}

fn config(timesteps: TimestepSelection) -> GrpoConfig {
    GrpoConfig {
        group: 4,
        steps: 4,
        shift: 1.0,
        sde: Sde::FlowGrpo(FlowGrpoSde::default()),
        shared_noise: true,
        advantage: AdvantageConfig::default(),
        clip: 0.2,
        kl_beta: 0.01,
        timesteps,
        rectify: true,
        lr: 3e-3,
        weight_decay: 0.0,
        grad_clip: Some(1.0),
        seed: 3,
        shards: 1,
    }
}

/// Mean reward of ODE samples from fixed noise.
fn evaluate(policy: &diffusion_core::WanTransformer<B>, text: &Tensor<B, 3>) -> f32 {
    let schedule = FlowMatchScheduleConfig::new(4).init().unwrap();
    let [c, f, h, w] = SHAPE;
    let n = text.dims()[0];
    let noise = randn::<B, 5>(
        [n, c, f, h, w],
        &mut StdRng::seed_from_u64(99),
        &text.device(),
    );
    let traj = Rollout::new(&schedule, &EulerOde)
        .sample(policy, noise, &Conditioning::new(text.clone()), 0)
        .unwrap();
    traj.last().clone().mean().into_scalar()
}

/// Two shards of the group's rows report the same loss, KL and clip fraction and apply the same
/// update as one graph, up to float rounding.
#[test]
fn sharded_rows_match_one_graph() {
    let dev = Default::default();
    AD::seed(&dev, 5);
    let policy = WanConfig::tiny().init::<AD>(&dev).unwrap();
    let text = Tensor::<B, 3>::random([2, 3, 16], Distribution::Normal(0.0, 1.0), &dev);
    let reward = LatentScore(MeanLatent { poison: false });
    let mut runs = Vec::new();
    for shards in [1, 2] {
        let mut cfg = config(TimestepSelection::RandomFraction {
            fraction: 0.75,
            skip_last: 1,
        });
        cfg.shards = shards;
        let mut trainer = GrpoTrainer::new(cfg, policy.clone()).unwrap();
        assert!(trainer.last_samples().is_none());
        let m = trainer
            .train_step(&[0, 1], text.clone(), SHAPE, &reward)
            .unwrap();
        // the samples the reward scored: 2 prompts x 4 rollouts, mean reward as reported
        let last = trainer.last_samples().unwrap().clone();
        let [c, f, h, w] = SHAPE;
        assert_eq!(last.dims(), [8, c, f, h, w]);
        let mean: f32 = last.mean().into_scalar();
        assert!(
            (mean as f64 - m.reward).abs() < 1e-5,
            "{mean} vs {}",
            m.reward
        );
        runs.push((m, param_snapshot(&trainer.policy).unwrap()));
    }
    let ((m1, v1), (m2, v2)) = (&runs[0], &runs[1]);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * (1.0 + a.abs());
    assert!(
        close(m1.loss, m2.loss) && close(m1.kl, m2.kl),
        "{m1:?} vs {m2:?}"
    );
    assert!(
        close(m1.grad_norm, m2.grad_norm) && m1.grad_norm > 0.0,
        "{m1:?} vs {m2:?}"
    );
    assert_eq!(m1.clip_fraction, m2.clip_fraction);
    // AdamW's first step is about lr * sign(g): count the entries that differ
    let (off, total) = differing_entries(v1, v2, 1e-6);
    assert!(off * 100 < total, "{off} of {total} entries differ");
}

/// Both selections raise the reward: a random fraction of the steps (every step stochastic), and
/// the iso-temporal one SDE step per update, which the examples use.
#[test]
fn grpo_raises_the_reward_and_moves_the_policy() {
    let selections = [
        (
            TimestepSelection::RandomFraction {
                fraction: 0.75,
                skip_last: 1,
            },
            2,
        ),
        (TimestepSelection::IsoTemporal { skip_last: 1 }, 1),
    ];
    for (timesteps, trained_steps) in selections {
        let dev = Default::default();
        AD::seed(&dev, 5);
        let policy = WanConfig::tiny().init::<AD>(&dev).unwrap();
        let text = Tensor::<B, 3>::random([2, 3, 16], Distribution::Normal(0.0, 1.0), &dev);
        let eval_text = Tensor::<B, 3>::random([8, 3, 16], Distribution::Normal(0.0, 1.0), &dev);
        let before = param_snapshot(&policy).unwrap();
        let r0 = evaluate(&policy.valid(), &eval_text);
        let reward = LatentScore(MeanLatent { poison: false });
        let mut trainer = GrpoTrainer::new(config(timesteps.clone()), policy).unwrap();
        let mut metrics = Vec::new();
        for _ in 0..25 {
            metrics.push(
                trainer
                    .train_step(&[0, 1], text.clone(), SHAPE, &reward)
                    .unwrap(),
            );
        }
        // first step: policy == reference and ratio == 1
        assert!(
            metrics[0].kl.abs() < 1e-6,
            "{timesteps:?}: {:?}",
            metrics[0]
        );
        assert_eq!(metrics[0].clip_fraction, 0.0);
        assert!(metrics
            .iter()
            .all(|m| m.trained_steps == trained_steps && m.grad_norm.is_finite()));
        assert!(metrics.last().unwrap().kl > 0.0);
        let r1 = evaluate(&trainer.policy.valid(), &eval_text);
        assert!(r1 > r0 + 0.1, "{timesteps:?}: held-out reward {r0} -> {r1}");
        // every parameter with a gradient moved (attention key biases get none; rope tables
        // and the unused parts of the time embedding are buffers)
        let after = param_snapshot(&trainer.policy).unwrap();
        let moved = before.iter().filter(|(id, v)| &after[*id] != *v).count();
        assert!(
            moved as f64 >= 0.9 * before.len() as f64,
            "{timesteps:?}: {moved} of {}",
            before.len()
        );
    }
}

#[test]
fn iso_temporal_trains_one_shared_step_and_bad_rewards_are_errors() {
    let dev = Default::default();
    AD::seed(&dev, 6);
    let policy = WanConfig::tiny().init::<AD>(&dev).unwrap();
    let text = Tensor::<B, 3>::random([2, 3, 16], Distribution::Normal(0.0, 1.0), &dev);
    let mut trainer = GrpoTrainer::new(
        config(TimestepSelection::IsoTemporal { skip_last: 1 }),
        policy.clone(),
    )
    .unwrap();
    let m = trainer
        .train_step(
            &[0, 1],
            text.clone(),
            SHAPE,
            &LatentScore(MeanLatent { poison: false }),
        )
        .unwrap();
    assert_eq!(m.trained_steps, 1);
    let poisoned = LatentScore(MeanLatent { poison: true });
    assert!(matches!(
        trainer.train_step(&[0, 1], text.clone(), SHAPE, &poisoned),
        Err(GrpoError::NonFiniteReward { .. })
    ));
    assert!(trainer.train_step(&[0], text, SHAPE, &poisoned).is_err());
    let mut bad = config(TimestepSelection::All);
    bad.group = 1;
    assert!(GrpoTrainer::new(bad, policy.clone()).is_err());
    let mut bad = config(TimestepSelection::All);
    bad.sde = Sde::DanceGrpo(Default::default());
    assert!(GrpoTrainer::new(bad, policy).is_err());
}
