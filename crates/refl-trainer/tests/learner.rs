//! The Learner on tiny models: every method trains through it, moves every trainable parameter
//! and no frozen one, and a run stopped and resumed from its checkpoint equals an uninterrupted
//! one bit for bit; sharded steps equal one graph; the guard rejects poisoned updates.

use std::collections::HashMap;

use burn::{
    backend::Autodiff,
    module::{AutodiffModule, Module},
    tensor::{backend::Backend, Tensor},
};
use diffusion_core::{
    backend::DefaultBackend,
    models::vae::{CausalVae, CausalVaeConfig},
    sampling::rollout::randn,
    train::snapshot::{differing_entries, param_snapshot, ParamValues},
    FlowGrpoSde, FlowMatchScheduleConfig, WanConfig, WanTransformer,
};
use ensemble::{Aggregation, Ensemble};
use grpo::{AdvantageConfig, GrpoConfig, LatentScore, PixelScore, Sde, TimestepSelection};
use latent_reward::{
    LatentReward, NoiseInput, PixelReward, ProcessReward, ProcessRewardConfig, RewardRange,
    VelrReward, VelrRewardConfig,
};
use rand::{rngs::StdRng, SeedableRng};
use refl_trainer::*;

type B = DefaultBackend;
type AD = Autodiff<B>;
type Dit = WanTransformer<AD>;
type Snapshot = HashMap<String, ParamValues>;

const SHAPE: [usize; 4] = [4, 3, 4, 4];

/// Mean brightness of the video, or NaN when `poison` is set.
#[derive(Debug, Clone, Copy)]
struct Brightness {
    poison: bool,
}

impl<Bk: Backend> PixelReward<Bk> for Brightness {
    type Prompt = usize;
    fn score_pixels(
        &self,
        video: Tensor<Bk, 5>,
        _: &[usize],
    ) -> latent_reward::Result<Tensor<Bk, 1>> {
        let b = video.dims()[0];
        let r = video.reshape([b as i32, -1]).mean_dim(1).reshape([b]);
        Ok(if self.poison {
            r.mul_scalar(f32::NAN)
        } else {
            r
        })
    }
}

/// A reward written here, not in the crates: closeness of the latent to 0.5 everywhere.
#[derive(Debug, Clone, Copy)]
struct TowardsHalf;

impl<Bk: Backend> LatentReward<Bk> for TowardsHalf {
    fn score(&self, latents: Tensor<Bk, 5>, _: Tensor<Bk, 1>, _: Tensor<Bk, 3>) -> Tensor<Bk, 1> {
        let b = latents.dims()[0];
        (latents.sub_scalar(0.5))
            .powi_scalar(2)
            .reshape([b as i32, -1])
            .mean_dim(1)
            .reshape([b])
            .neg()
    }
    fn range(&self) -> RewardRange {
        RewardRange::Real
    }
    fn check_input(&self, _: [usize; 5], _: [usize; 3]) -> latent_reward::Result<()> {
        Ok(())
    }
}

struct World {
    dit: Dit,
    vae: CausalVae<AD>,
    train: PromptSet<B, usize>,
    heldout: PromptSet<B, usize>,
    sft: SftData<B>,
}

fn world() -> World {
    let dev = Default::default();
    AD::seed(&dev, 3);
    let mut dit: Dit = WanConfig::tiny().init(&dev).unwrap();
    // a frozen part, which no method may change
    dit.patch_embedding = dit.patch_embedding.no_grad();
    // drawn from a local generator: the device's global one is shared with other tests
    let mut rng = StdRng::seed_from_u64(42);
    let mut text = |n| randn::<B, 3>([n, 3, 16], &mut rng, &dev);
    let [c, f, h, w] = SHAPE;
    World {
        dit,
        vae: CausalVaeConfig::new(4, vec![8])
            .with_temporal_stages(1)
            .with_groups(4)
            .init(&dev)
            .unwrap(),
        train: PromptSet::new((0..6).collect(), text(6)).unwrap(),
        heldout: PromptSet::new((0..3).collect(), text(3)).unwrap(),
        sft: SftData::new(
            randn([5, c, f, h, w], &mut StdRng::seed_from_u64(43), &dev),
            text(5),
        )
        .unwrap(),
    }
}

fn norm() -> LatentNorm {
    LatentNorm {
        mean: vec![0.0; SHAPE[0]],
        std: vec![1.0; SHAPE[0]],
    }
}

fn sampling() -> SamplingConfig {
    SamplingConfig {
        steps: 6,
        shift: 3.0,
    }
}

fn learner_config(name: &str) -> LearnerConfig {
    let out = std::env::temp_dir().join(format!("learner_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    LearnerConfig {
        steps: 4,
        optim: OptimConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            grad_clip: Some(1.0),
            schedule: LrSchedule::Warmup { warmup: 2 },
        },
        guard: GuardConfig::default(),
        seed: 5,
        eval_every: 2,
        checkpoint_every: 2,
        out,
    }
}

fn evaluator(w: &World) -> HeldoutReward<B, CausalVae<B>, Brightness, usize> {
    HeldoutReward {
        vae: w.vae.valid(),
        norm: norm(),
        pixel: Brightness { poison: false },
        prompts: w.heldout.clone(),
        schedule: FlowMatchScheduleConfig::new(6)
            .with_shift(3.0)
            .init()
            .unwrap(),
        latent_shape: SHAPE,
    }
}

fn prm(w: &World) -> ProcessReward<AD> {
    ProcessRewardConfig::new(1)
        .with_pool_heads(2)
        .with_head(vec![8])
        .init(&w.dit, &Default::default())
        .unwrap()
        .no_grad()
}

fn velr_members(noise: NoiseInput) -> Vec<VelrReward<AD>> {
    (0..2)
        .map(|_| {
            VelrRewardConfig::new(SHAPE, 16)
                .with_channels(vec![8, 8, 8])
                .with_groups(4)
                .with_heads(2)
                .with_layers(1)
                .with_noise(noise)
                .init::<AD>(&Default::default())
                .unwrap()
        })
        .collect()
}

fn prfl_config() -> PrflConfig {
    PrflConfig {
        batch: 2,
        sampling: sampling(),
        sft_every: 2,
        ..PrflConfig::default()
    }
}

fn velr_config() -> VelrConfig {
    VelrConfig {
        batch: 2,
        sampling: sampling(),
        start: [1, 3],
        window: 2,
        buffer: 3,
        align_every: 2,
        align_steps: 2,
        align_lr: 1e-3,
        ..VelrConfig::default()
    }
}

fn grpo_config(timesteps: TimestepSelection) -> GrpoConfig {
    GrpoConfig {
        prompts: 2,
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
        shards: 1,
    }
}

/// Every parameter of `before` that is trainable differs in `after`, no frozen one does, and
/// some are frozen.
fn assert_moved(name: &str, before: &Snapshot, after: &Snapshot) {
    let mut frozen = 0;
    for (id, p) in before {
        if p.trainable {
            assert_ne!(
                &after[id], p,
                "{name}: trainable parameter {id} did not move"
            );
        } else {
            frozen += 1;
            assert_eq!(&after[id], p, "{name}: frozen parameter {id} moved");
        }
    }
    assert!(frozen > 0, "{name}: the test policy has frozen parameters");
}

/// Trains 4 steps uninterrupted, and 2 steps + a fresh learner resuming for 2 more: the
/// policies, the method's state (`state`) and the logged metrics agree bit for bit.
fn trains_and_resumes<T: Method<AD, Dit>>(
    name: &str,
    w: &World,
    make: impl Fn() -> T,
    state: impl Fn(&T) -> Vec<Snapshot>,
) -> Vec<StepMetrics> {
    let full_cfg = learner_config(&format!("{name}_full"));
    let before = param_snapshot(&w.dit).unwrap();
    let mut full = Learner::new(full_cfg.clone(), w.dit.clone(), make())
        .unwrap()
        .with_evaluator(evaluator(w));
    let metrics = full.run().unwrap();
    assert_eq!(metrics.len(), 4, "{name}");
    assert!(
        metrics.iter().all(|m| m.loss.is_some_and(f64::is_finite)),
        "{name}: {metrics:?}"
    );
    assert!(metrics[1].heldout_reward.is_some() && metrics[2].heldout_reward.is_none());
    let after = param_snapshot(full.policy()).unwrap();
    assert_moved(name, &before, &after);

    let cfg = learner_config(&format!("{name}_resumed"));
    let mut first = Learner::new(cfg.clone(), w.dit.clone(), make())
        .unwrap()
        .with_evaluator(evaluator(w));
    first.train_step().unwrap();
    first.train_step().unwrap();
    drop(first);
    let mut resumed = Learner::new(cfg.clone(), w.dit.clone(), make())
        .unwrap()
        .with_evaluator(evaluator(w));
    assert_eq!(resumed.step(), 2, "{name}");
    resumed.run().unwrap();
    // bit-exact on the CPU; GPU backends may pick other kernels (autotuning) between runs
    let cpu = diffusion_core::backend::DEFAULT_BACKEND_NAME.contains("cpu");
    let tol = if cpu { 0.0 } else { 1e-4 };
    let (off, total) = differing_entries(&after, &param_snapshot(resumed.policy()).unwrap(), tol);
    assert_eq!(
        off, 0,
        "{name}: {off} of {total} policy entries differ after resume"
    );
    for (a, b) in state(full.method()).iter().zip(state(resumed.method())) {
        let (off, total) = differing_entries(a, &b, tol);
        assert_eq!(
            off, 0,
            "{name}: {off} of {total} method state entries differ"
        );
    }
    let log = |c: &LearnerConfig| MetricsLog::read(&c.out.join("metrics.jsonl")).unwrap();
    let key = |m: &StepMetrics| (m.step, m.loss, m.latent_reward, m.kl, m.heldout_reward);
    if cpu {
        assert_eq!(
            log(&full_cfg).iter().map(key).collect::<Vec<_>>(),
            log(&cfg).iter().map(key).collect::<Vec<_>>(),
            "{name}: logs differ"
        );
    }
    let _ = std::fs::remove_dir_all(&full_cfg.out);
    let _ = std::fs::remove_dir_all(&cfg.out);
    metrics
}

#[test]
fn prfl_trains_and_resumes_exactly() {
    let w = world();
    let prm = prm(&w);
    let metrics = trains_and_resumes(
        "prfl",
        &w,
        || {
            Prfl::<AD, Dit, _, _>::new(
                prfl_config(),
                prm.clone(),
                w.train.clone(),
                SHAPE,
                Some(w.sft.clone()),
            )
            .unwrap()
        },
        |_| vec![],
    );
    assert!(metrics[0].sft_loss.is_some() && metrics[1].sft_loss.is_none());
}

#[test]
fn rgb_refl_trains_and_resumes_exactly() {
    let w = world();
    for frames in [FrameSelection::All, FrameSelection::First] {
        let cfg = RgbReflConfig {
            batch: 2,
            sampling: sampling(),
            window: 2,
            frames,
            ..RgbReflConfig::default()
        };
        trains_and_resumes(
            &format!("rgb_{frames:?}"),
            &w,
            || {
                RgbRefl::new(
                    cfg.clone(),
                    w.vae.clone().no_grad(),
                    norm(),
                    Brightness { poison: false },
                    w.train.clone(),
                    SHAPE,
                )
                .unwrap()
            },
            |_| vec![],
        );
    }
}

#[test]
fn velr_trains_aligns_and_resumes_exactly() {
    let w = world();
    let members = velr_members(NoiseInput::Ignored);
    let make = || {
        Velr::<AD, Dit, _, _, _, _>::new(
            velr_config(),
            Ensemble::new(members.clone()).unwrap(),
            w.vae.valid(),
            norm(),
            Brightness { poison: false },
            w.train.clone(),
            SHAPE,
        )
        .unwrap()
    };
    let state = |v: &Velr<AD, Dit, VelrReward<AD>, CausalVae<B>, Brightness, usize>| {
        v.ensemble()
            .members
            .iter()
            .map(|m| param_snapshot(m).unwrap())
            .collect()
    };
    let metrics = trains_and_resumes("velr", &w, make, state);
    assert!(metrics
        .iter()
        .all(|m| m.kl.is_some() && m.uncertainty.unwrap() >= 0.0));
    // KL starts at zero (policy == reference) and grows once the policy moved
    assert!(metrics[0].kl.unwrap() < 1e-10 && metrics[3].kl.unwrap() > 0.0);
    // online alignment changed the ensemble, and its buffer filled
    let mut learner = Learner::new(learner_config("velr_align"), w.dit.clone(), make()).unwrap();
    learner.run().unwrap();
    let aligned = state(learner.method());
    assert_ne!(aligned[0], param_snapshot(&members[0]).unwrap());
    assert!(!replay_buffer::ReplayBuffer::is_empty(
        &learner.method().alignment().buffer
    ));
    let _ = std::fs::remove_dir_all(&learner.config().out);
}

#[test]
fn grpo_trains_and_resumes_exactly() {
    let w = world();
    let metrics = trains_and_resumes(
        "grpo",
        &w,
        || {
            Grpo::<AD, Dit, _, _>::new(
                grpo_config(TimestepSelection::RandomFraction {
                    fraction: 0.75,
                    skip_last: 1,
                }),
                LatentScore(TowardsHalf),
                w.train.clone(),
                SHAPE,
            )
            .unwrap()
        },
        |_| vec![],
    );
    // the first step: policy == reference, every ratio 1
    assert!(metrics[0].kl.unwrap().abs() < 1e-6, "{:?}", metrics[0]);
    assert_eq!(metrics[0].extra["clip_fraction"], 0.0);
    assert!(metrics.iter().all(|m| m.extra["trained_steps"] == 2.0));
}

/// GRPO against a latent ensemble aligned on its rollouts (labels: the pixel reward of the
/// decoded rollouts): the members change, and they and their buffer resume exactly.
#[test]
fn grpo_with_an_aligned_ensemble_resumes_exactly() {
    let w = world();
    let members = velr_members(NoiseInput::Ignored);
    let make = || {
        let labeller = PixelScore {
            vae: w.vae.valid(),
            norm: norm(),
            pixel: Brightness { poison: false },
        };
        let alignment = AlignmentConfig {
            capacity: 8,
            steps: 2,
            batch: 4,
            lr: 1e-3,
        };
        let reward = AlignedEnsemble::new(
            Ensemble::new(members.clone()).unwrap(),
            labeller,
            alignment,
            2,
            SHAPE,
        )
        .unwrap();
        Grpo::<AD, Dit, _, _>::new(
            grpo_config(TimestepSelection::IsoTemporal { skip_last: 1 }),
            reward,
            w.train.clone(),
            SHAPE,
        )
        .unwrap()
    };
    let metrics = trains_and_resumes("grpo_aligned", &w, make, |g| {
        g.reward()
            .ensemble()
            .members
            .iter()
            .map(|m| param_snapshot(m).unwrap())
            .collect()
    });
    // rounds after steps 0 and 2 report how the members ranked the rollouts
    assert!(metrics[0].extra.contains_key("align_group_pearson"));
    assert!(!metrics[1].extra.contains_key("align_group_pearson"));
}

#[test]
fn sft_trains_and_resumes_exactly() {
    let w = world();
    let cfg = SftConfig {
        batch: 2,
        timesteps: diffusion_core::train::loss::TimestepSampling::Uniform { shift: 3.0 },
        shards: 1,
    };
    trains_and_resumes(
        "sft",
        &w,
        || Sft::new(cfg.clone(), w.sft.clone()).unwrap(),
        |_| vec![],
    );
}

/// A reward defined in this file plugs into PRFL and GRPO unchanged, and both raise it.
#[test]
fn a_user_defined_reward_plugs_in() {
    let w = world();
    let cfg = PrflConfig {
        sft_every: 0,
        ..prfl_config()
    };
    let prfl = Prfl::<AD, Dit, _, _>::new(cfg, TowardsHalf, w.train.clone(), SHAPE, None).unwrap();
    let mut lc = learner_config("user_reward_prfl");
    (lc.steps, lc.optim.lr) = (12, 3e-3);
    let mut learner = Learner::new(lc, w.dit.clone(), prfl).unwrap();
    let m = learner.run().unwrap();
    for s in &m {
        // lambda 0.1, margin 2: the loss is 0.1 * (2 - r) for the reward reported
        let want = 0.1 * (2.0 - s.latent_reward.unwrap());
        assert!((s.loss.unwrap() - want).abs() < 1e-6, "{s:?}");
    }
    let first: f64 = m[..3].iter().map(|s| s.latent_reward.unwrap()).sum();
    let last: f64 = m[9..].iter().map(|s| s.latent_reward.unwrap()).sum();
    assert!(last > first, "PRFL: reward {first} -> {last} over 3 steps");
    let _ = std::fs::remove_dir_all(&learner.config().out);

    let grpo = Grpo::<AD, Dit, _, _>::new(
        grpo_config(TimestepSelection::IsoTemporal { skip_last: 1 }),
        LatentScore(TowardsHalf),
        w.train.clone(),
        SHAPE,
    )
    .unwrap();
    let mut lc = learner_config("user_reward_grpo");
    (lc.steps, lc.optim.lr) = (25, 3e-3);
    let mut learner = Learner::new(lc, w.dit.clone(), grpo).unwrap();
    let m = learner.run().unwrap();
    let first: f64 = m[..5].iter().map(|s| s.latent_reward.unwrap()).sum();
    let last: f64 = m[20..].iter().map(|s| s.latent_reward.unwrap()).sum();
    assert!(last > first, "GRPO: reward {first} -> {last} over 5 steps");
    let _ = std::fs::remove_dir_all(&learner.config().out);
}

/// Two batch shards on their own threads give the same update as one graph, up to float
/// rounding, and report the same loss, reward, KL and uncertainty.
#[test]
fn sharded_steps_match_one_graph() {
    let w = world();
    let prm = prm(&w);
    let members = velr_members(NoiseInput::Ignored);
    let one = |name: &str, shards: usize| -> (StepMetrics, Snapshot) {
        let lc = learner_config(&format!("shards_{name}_{shards}"));
        let (m, policy) = match name {
            "prfl" => {
                let cfg = PrflConfig {
                    shards,
                    sft_every: 1,
                    ..prfl_config()
                };
                let method = Prfl::new(
                    cfg,
                    prm.clone(),
                    w.train.clone(),
                    SHAPE,
                    Some(w.sft.clone()),
                )
                .unwrap();
                first_step(&w, &lc, method)
            }
            "rgb" => rgb_refl_step(
                &w,
                &lc,
                RgbReflConfig {
                    batch: 2,
                    sampling: sampling(),
                    shards,
                    ..RgbReflConfig::default()
                },
            ),
            _ => {
                let cfg = VelrConfig {
                    shards,
                    ..velr_config()
                };
                let method = Velr::<AD, Dit, _, _, _, _>::new(
                    cfg,
                    Ensemble::new(members.clone()).unwrap(),
                    w.vae.valid(),
                    norm(),
                    Brightness { poison: false },
                    w.train.clone(),
                    SHAPE,
                )
                .unwrap();
                first_step(&w, &lc, method)
            }
        };
        let _ = std::fs::remove_dir_all(&lc.out);
        (m, policy)
    };
    for name in ["prfl", "rgb", "velr"] {
        assert_same_step(name, one(name, 1), one(name, 2));
    }
}

/// RGB ReFL with the checkpointed decoder (decode without a graph, the reward's gradient on
/// the video carried back by recomputation) gives the kept graph's step.
#[test]
fn rgb_refl_checkpointed_decoder_gives_the_graphs_step() {
    let w = world();
    let one = |decoder_gradient: DecoderGradient| -> (StepMetrics, Snapshot) {
        let lc = learner_config(&format!("rgb_decoder_{decoder_gradient}"));
        let cfg = RgbReflConfig {
            batch: 2,
            sampling: sampling(),
            decoder_gradient,
            ..RgbReflConfig::default()
        };
        let out = rgb_refl_step(&w, &lc, cfg);
        let _ = std::fs::remove_dir_all(&lc.out);
        out
    };
    assert_same_step(
        "rgb_refl",
        one(DecoderGradient::Graph),
        one(DecoderGradient::Checkpointed),
    );
}

/// One RGB ReFL step of `cfg` on the world's DiT, scored by brightness.
fn rgb_refl_step(w: &World, lc: &LearnerConfig, cfg: RgbReflConfig) -> (StepMetrics, Snapshot) {
    let method = RgbRefl::new(
        cfg,
        w.vae.clone().no_grad(),
        norm(),
        Brightness { poison: false },
        w.train.clone(),
        SHAPE,
    )
    .unwrap();
    first_step(w, lc, method)
}

/// The first step of `method` on the world's DiT: its metrics and the updated weights.
fn first_step<M: Method<AD, Dit>>(
    w: &World,
    lc: &LearnerConfig,
    method: M,
) -> (StepMetrics, Snapshot) {
    let mut l = Learner::new(lc.clone(), w.dit.clone(), method).unwrap();
    (l.train_step().unwrap(), param_snapshot(l.policy()).unwrap())
}

/// Two runs of one step report the same loss, reward, gradient norm, KL and uncertainty, up to
/// float rounding, and updated the same parameters.
fn assert_same_step(
    name: &str,
    (m1, v1): (StepMetrics, Snapshot),
    (m2, v2): (StepMetrics, Snapshot),
) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * (1.0 + a.abs());
    assert!(
        close(m1.loss.unwrap(), m2.loss.unwrap()),
        "{name}: {m1:?} vs {m2:?}"
    );
    assert!(close(m1.latent_reward.unwrap(), m2.latent_reward.unwrap()));
    assert!(close(m1.grad_norm.unwrap(), m2.grad_norm.unwrap()));
    let both = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => close(a, b),
        (a, b) => a.is_none() && b.is_none(),
    };
    assert!(
        both(m1.kl, m2.kl) && both(m1.uncertainty, m2.uncertainty),
        "{name}"
    );
    // AdamW's first step is about lr * sign(g): entries whose gradient is near zero may
    // flip on rounding, so count the entries that differ instead of bounding every one
    let (off, total) = differing_entries(&v1, &v2, 1e-6);
    assert!(off * 100 < total, "{name}: {off} of {total} entries differ");
}

/// PRFL against a noise-aware VELR ensemble (the quickstart's process reward) with a KL term:
/// the loss is `lambda * (margin - r) + beta * KL` of the ensemble's lower confidence bound, the
/// KL is 0 at the first step and positive after, and the members stay as they were.
#[test]
fn prfl_with_a_noise_aware_velr_ensemble() {
    let w = world();
    let members: Vec<_> = velr_members(NoiseInput::BlockFilm)
        .into_iter()
        .map(Module::no_grad)
        .collect();
    let ens = Ensemble::new(members.clone())
        .unwrap()
        .with_aggregation(Aggregation::LowerConfidenceBound { k: 1.0 });
    let cfg = PrflConfig {
        kl_beta: 0.5,
        sft_every: 0,
        // the graded latent is never the last: the KL always applies
        start: Some([0, 3]),
        ..prfl_config()
    };
    let method = Prfl::<AD, Dit, _, _>::new(cfg, ens, w.train.clone(), SHAPE, None).unwrap();
    let mut l = Learner::new(learner_config("prfl_velr"), w.dit.clone(), method).unwrap();
    for step in 0..2 {
        let m = l.train_step().unwrap();
        let (loss, r, kl) = (m.loss.unwrap(), m.latent_reward.unwrap(), m.kl.unwrap());
        // 0 up to rounding (the autodiff and the plain forward round apart), then clearly not
        assert_eq!(kl < 1e-10, step == 0, "KL {kl} at step {step}");
        let want = 0.1 * (2.0 - r) + 0.5 * kl;
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    }
    for (before, m) in members.iter().zip(&l.method().reward().members) {
        assert_eq!(param_snapshot(before).unwrap(), param_snapshot(m).unwrap());
    }
    let _ = std::fs::remove_dir_all(&l.config().out);
}

/// An ensemble of two copies of one process reward model under the lower confidence bound
/// (std 0) is that model, step for step.
#[test]
fn prfl_with_a_process_ensemble_of_twins_is_the_single_model() {
    let w = world();
    let one = prm(&w);
    let cfg = PrflConfig {
        sft_every: 0,
        ..prfl_config()
    };
    let single = {
        let m = Prfl::<AD, Dit, _, _>::new(cfg.clone(), one.clone(), w.train.clone(), SHAPE, None)
            .unwrap();
        let mut l = Learner::new(learner_config("prfl_single"), w.dit.clone(), m).unwrap();
        let out = l.train_step().unwrap();
        let _ = std::fs::remove_dir_all(&l.config().out);
        out
    };
    let twins = Ensemble::new(vec![one.clone(), one])
        .unwrap()
        .with_aggregation(Aggregation::LowerConfidenceBound { k: 1.0 });
    let pair = {
        let m = Prfl::<AD, Dit, _, _>::new(cfg, twins, w.train.clone(), SHAPE, None).unwrap();
        let mut l = Learner::new(learner_config("prfl_twins"), w.dit.clone(), m).unwrap();
        let out = l.train_step().unwrap();
        let _ = std::fs::remove_dir_all(&l.config().out);
        out
    };
    let close = |a: Option<f64>, b: Option<f64>| (a.unwrap() - b.unwrap()).abs() < 1e-5;
    assert!(close(pair.loss, single.loss), "{pair:?} vs {single:?}");
    assert!(close(pair.latent_reward, single.latent_reward));
}

/// A LoRA policy (adapters with dropout on both attentions): PRFL moves every adapter and no
/// base weight, and a resumed run equals the uninterrupted one (the dropout masks included).
#[test]
fn lora_policy_trains_only_its_adapters_and_resumes_exactly() {
    let mut w = world();
    let lora = diffusion_core::ops::lora::LoraConfig::new(2).with_dropout(0.1);
    w.dit = w.dit.clone().with_lora(&lora, &Default::default()).unwrap();
    assert_eq!(w.dit.lora_layer_count(), 2 * 8);
    let prm = prm(&world());
    trains_and_resumes(
        "prfl_lora",
        &w,
        || {
            Prfl::<AD, Dit, _, _>::new(
                prfl_config(),
                prm.clone(),
                w.train.clone(),
                SHAPE,
                Some(w.sft.clone()),
            )
            .unwrap()
        },
        |_| vec![],
    );
}
