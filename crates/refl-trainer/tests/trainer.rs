//! The trainer on tiny models: every method runs, trainable parameters move, the NaN guard
//! skips and aborts, and a resumed run equals an uninterrupted one.

use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, Tensor},
};
use diffusion_core::{
    backend::DefaultBackend,
    rollout::randn,
    snapshot::{differing_entries, param_snapshot},
    vae::CausalVaeConfig,
    WanConfig,
};
use ensemble::{Aggregation, Ensemble};
use latent_reward::{NoiseInput, PixelReward, ProcessRewardConfig, VelrReward, VelrRewardConfig};
use rand::{rngs::StdRng, SeedableRng};
use refl_trainer::*;

type B = DefaultBackend;
type AD = Autodiff<B>;
type Inner = B;

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

const SHAPE: [usize; 4] = [4, 3, 4, 4];

fn config(method: Method, out: &str) -> RunConfig {
    RunConfig {
        method,
        steps: 4,
        batch: 2,
        sampling: SamplingConfig {
            steps: 6,
            shift: 3.0,
        },
        optim: OptimConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            grad_clip: Some(1.0),
            schedule: LrSchedule::Warmup { warmup: 2 },
        },
        max_skipped: 1,
        seed: 5,
        eval_every: 2,
        checkpoint_every: 2,
        out: std::env::temp_dir().join(format!("refl_{out}_{}", std::process::id())),
        shards: 1,
    }
}

fn prfl(sft_every: usize) -> Method {
    Method::Prfl(PrflConfig {
        start: None,
        window: 1,
        lambda: 0.1,
        margin: 2.0,
        sft_every,
        kl_beta: 0.0,
    })
}

struct World {
    dit: diffusion_core::WanTransformer<AD>,
    vae: diffusion_core::vae::CausalVae<AD>,
}

fn world() -> World {
    let dev = Default::default();
    AD::seed(&dev, 3);
    World {
        dit: WanConfig::tiny().init(&dev).unwrap(),
        vae: CausalVaeConfig::new(4, vec![8])
            .with_temporal_stages(1)
            .with_groups(4)
            .init(&dev)
            .unwrap(),
    }
}

fn parts(
    w: &World,
    config: RunConfig,
    reward: LatentRewards<AD>,
    pixel: Brightness,
) -> TrainerParts<AD, diffusion_core::vae::CausalVae<AD>, Brightness, usize> {
    let dev = Default::default();
    // the same prompts and SFT data for every trainer built from these parts: drawn from a
    // local generator (the device's global one is shared with the tests running beside this one)
    let mut rng = StdRng::seed_from_u64(42);
    let mut text = |n| randn::<Inner, 3>([n, 3, 16], &mut rng, &dev);
    let [c, f, h, ww] = SHAPE;
    TrainerParts {
        config,
        policy: w.dit.clone(),
        vae: w.vae.clone(),
        norm: LatentNorm {
            mean: vec![0.0; c],
            std: vec![1.0; c],
        },
        pixel,
        reward,
        train: PromptSet::new((0..6).collect(), text(6)).unwrap(),
        heldout: PromptSet::new((0..3).collect(), text(3)).unwrap(),
        sft: Some(SftData {
            latents: randn([5, c, f, h, ww], &mut StdRng::seed_from_u64(43), &dev),
            text: text(5),
        }),
        latent_shape: SHAPE,
    }
}

fn prm(w: &World) -> LatentRewards<AD> {
    let prm = ProcessRewardConfig::new(1)
        .with_pool_heads(2)
        .with_head(vec![8])
        .init(&w.dit, &Default::default())
        .unwrap();
    LatentRewards::Process(prm)
}

fn ensemble() -> Ensemble<VelrReward<AD>> {
    ensemble_reading(NoiseInput::Ignored)
}

fn ensemble_reading(noise: NoiseInput) -> Ensemble<VelrReward<AD>> {
    let members = (0..2)
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
        .collect();
    Ensemble::new(members).unwrap()
}

fn velr() -> Method {
    Method::Velr(VelrConfig {
        start: [1, 3],
        window: 2,
        kl_beta: 10.0,
        aggregation: Aggregation::Mean,
        buffer: 3,
        label_every: 1,
        align_every: 2,
        align_steps: 2,
        align_lr: 1e-3,
    })
}

#[test]
fn prfl_moves_the_policy_logs_and_resumes_exactly() {
    let w = world();
    let cfg = config(prfl(2), "prfl_full");
    let _ = std::fs::remove_dir_all(&cfg.out);
    let prm = prm(&w);
    let before = param_snapshot(&w.dit).unwrap();
    let mut full = Trainer::new(parts(
        &w,
        cfg.clone(),
        prm.clone(),
        Brightness { poison: false },
    ))
    .unwrap();
    let metrics = full.run().unwrap();
    assert_eq!(metrics.len(), 4);
    assert!(metrics
        .iter()
        .all(|m| m.loss.is_some() && m.grad_norm.unwrap().is_finite()));
    assert!(metrics[0].sft_loss.is_some() && metrics[1].sft_loss.is_none());
    assert!(metrics[1].heldout_reward.is_some() && metrics[2].heldout_reward.is_none());
    let after = param_snapshot(&full.policy).unwrap();
    let moved = before.iter().filter(|(id, v)| &after[*id] != *v).count();
    // every policy parameter gets a gradient from the reward step or the SFT step
    assert_eq!(moved, before.len(), "{moved} of {} moved", before.len());
    let log = MetricsLog::read(&cfg.out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        log.iter().map(|m| m.step).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );

    // interrupted after 2 steps, resumed by a fresh trainer from the checkpoint
    let cfg2 = config(prfl(2), "prfl_resumed");
    let _ = std::fs::remove_dir_all(&cfg2.out);
    let mut first = Trainer::new(parts(
        &w,
        cfg2.clone(),
        prm.clone(),
        Brightness { poison: false },
    ))
    .unwrap();
    first.train_step().unwrap();
    first.train_step().unwrap();
    drop(first);
    let mut resumed = Trainer::new(parts(
        &w,
        cfg2.clone(),
        prm.clone(),
        Brightness { poison: false },
    ))
    .unwrap();
    assert_eq!(resumed.step(), 2);
    resumed.run().unwrap();
    let resumed_values = param_snapshot(&resumed.policy).unwrap();
    // bit-exact on the CPU; GPU backends may pick other kernels (autotuning) between runs
    let cpu = diffusion_core::backend::DEFAULT_BACKEND_NAME.contains("cpu");
    for (id, v) in &after {
        let r = &resumed_values[id];
        if cpu {
            assert_eq!(r, v, "parameter {id} differs after resume");
        } else {
            let diff = r
                .values
                .iter()
                .zip(&v.values)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "parameter {id} differs after resume by {diff}");
        }
    }
    // a different config refuses the checkpoint
    let mut other = cfg2.clone();
    other.seed = 6;
    assert!(matches!(
        Trainer::new(parts(&w, other, prm.clone(), Brightness { poison: false })),
        Err(TrainError::Checkpoint { .. })
    ));
    let _ = std::fs::remove_dir_all(&cfg.out);
    let _ = std::fs::remove_dir_all(&cfg2.out);
}

/// Two batch shards on their own threads give the same update as one graph (PRFL with its SFT
/// step, RGB ReFL, VELR with its buffer), up to float rounding, and report the same loss, reward,
/// KL and uncertainty.
#[test]
fn sharded_steps_match_one_graph() {
    let w = world();
    let rgb = Method::RgbRefl(RgbReflConfig {
        window: 1,
        frames: FrameSelection::All,
        lambda: 1.0,
    });
    for (name, method, reward) in [
        ("prfl", prfl(1), prm(&w)),
        ("rgb", rgb, LatentRewards::Pixel),
        ("velr", velr(), LatentRewards::Ensemble(ensemble())),
    ] {
        let mut runs = Vec::new();
        for shards in [1, 2] {
            let mut cfg = config(method.clone(), &format!("shards_{name}_{shards}"));
            cfg.shards = shards;
            let _ = std::fs::remove_dir_all(&cfg.out);
            let mut t = Trainer::new(parts(
                &w,
                cfg.clone(),
                reward.clone(),
                Brightness { poison: false },
            ))
            .unwrap();
            let m = t.train_step().unwrap();
            runs.push((m, param_snapshot(&t.policy).unwrap()));
            let _ = std::fs::remove_dir_all(&cfg.out);
        }
        let ((m1, v1), (m2, v2)) = (&runs[0], &runs[1]);
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
        let (off, total) = differing_entries(v1, v2, 1e-6);
        assert!(off * 100 < total, "{name}: {off} of {total} entries differ");
    }
}

#[test]
fn nan_rewards_are_skipped_then_abort() {
    let w = world();
    let cfg = config(
        Method::RgbRefl(RgbReflConfig {
            window: 1,
            frames: FrameSelection::All,
            lambda: 1.0,
        }),
        "nan",
    );
    let _ = std::fs::remove_dir_all(&cfg.out);
    let before = param_snapshot(&w.dit).unwrap();
    let mut t = Trainer::new(parts(
        &w,
        cfg.clone(),
        LatentRewards::Pixel,
        Brightness { poison: true },
    ))
    .unwrap();
    let m = t.train_step().unwrap();
    assert_eq!((m.loss, m.skipped), (None, 1));
    assert_eq!(
        param_snapshot(&t.policy).unwrap(),
        before,
        "a skipped step must not update"
    );
    assert!(matches!(t.train_step(), Err(TrainError::Diverged { .. })));
    let _ = std::fs::remove_dir_all(&cfg.out);
}

#[test]
fn rgb_refl_and_velr_steps_run() {
    let w = world();
    for frames in [FrameSelection::All, FrameSelection::First] {
        let cfg = config(
            Method::RgbRefl(RgbReflConfig {
                window: 2,
                frames,
                lambda: 1.0,
            }),
            "rgb",
        );
        let _ = std::fs::remove_dir_all(&cfg.out);
        let mut t = Trainer::new(parts(
            &w,
            cfg.clone(),
            LatentRewards::Pixel,
            Brightness { poison: false },
        ))
        .unwrap();
        let m = t.train_step().unwrap();
        assert!(m.loss.is_some() && m.grad_norm.unwrap() > 0.0);
        let _ = std::fs::remove_dir_all(&cfg.out);
    }
    let ens = ensemble();
    let cfg = config(velr(), "velr");
    let _ = std::fs::remove_dir_all(&cfg.out);
    let mut t = Trainer::new(parts(
        &w,
        cfg.clone(),
        LatentRewards::Ensemble(ens.clone()),
        Brightness { poison: false },
    ))
    .unwrap();
    let metrics = t.run().unwrap();
    assert!(metrics
        .iter()
        .all(|m| m.kl.is_some() && m.uncertainty.unwrap() >= 0.0));
    // KL starts at zero (policy == reference) and grows once the policy moved
    assert!(metrics[0].kl.unwrap() < 1e-10 && metrics[3].kl.unwrap() > 0.0);
    // online alignment changed the ensemble
    let LatentRewards::Ensemble(aligned) = &t.reward else {
        unreachable!()
    };
    assert_ne!(
        param_snapshot(&aligned.members[0]).unwrap(),
        param_snapshot(&ens.members[0]).unwrap()
    );
    // the checkpoint holds the replay buffer, and a new trainer resumes from it
    t.save_checkpoint().unwrap();
    let buffer: replay_buffer::PrioritisedBuffer<refl_trainer::BufferItem> = replay_buffer::load(
        &cfg.out
            .join("checkpoint")
            .join(format!("buffer-{:08}.json", t.step())),
    )
    .unwrap();
    assert!(!replay_buffer::ReplayBuffer::is_empty(&buffer));
    let resumed = Trainer::new(parts(
        &w,
        cfg.clone(),
        LatentRewards::Ensemble(ens.clone()),
        Brightness { poison: false },
    ))
    .unwrap();
    assert_eq!(resumed.step(), t.step());
    let _ = std::fs::remove_dir_all(&cfg.out);
}

/// PRFL against an ensemble of process reward models: an ensemble of two copies of one model
/// under the lower confidence bound (std 0) is that model, step for step; two different members
/// train the policy; VELR does not take process reward models.
#[test]
fn prfl_with_a_process_ensemble() {
    let w = world();
    let LatentRewards::Process(one) = prm(&w) else {
        unreachable!()
    };
    let lcb = Aggregation::LowerConfidenceBound { k: 1.0 };
    let run = |reward: LatentRewards<AD>, out: &str| {
        let cfg = config(prfl(0), out);
        let _ = std::fs::remove_dir_all(&cfg.out);
        let mut t =
            Trainer::new(parts(&w, cfg.clone(), reward, Brightness { poison: false })).unwrap();
        let m = t.train_step().unwrap();
        let _ = std::fs::remove_dir_all(&cfg.out);
        m
    };
    let single = run(LatentRewards::Process(one.clone()), "prfl_single");
    let twins = Ensemble::new(vec![one.clone(), one.clone()])
        .unwrap()
        .with_aggregation(lcb);
    let pair = run(LatentRewards::ProcessEnsemble(twins), "prfl_twins");
    let close = |a: Option<f64>, b: Option<f64>| (a.unwrap() - b.unwrap()).abs() < 1e-5;
    assert!(close(pair.loss, single.loss), "{pair:?} vs {single:?}");
    assert!(close(pair.latent_reward, single.latent_reward));

    let LatentRewards::Process(other) = prm(&w) else {
        unreachable!()
    };
    let mixed = Ensemble::new(vec![one, other])
        .unwrap()
        .with_aggregation(lcb);
    let m = run(LatentRewards::ProcessEnsemble(mixed.clone()), "prfl_mixed");
    assert!(m.loss.unwrap().is_finite() && m.grad_norm.unwrap() > 0.0);
    assert!(Trainer::new(parts(
        &w,
        config(velr(), "velr_with_prms"),
        LatentRewards::ProcessEnsemble(mixed),
        Brightness { poison: false },
    ))
    .is_err());
}

/// PRFL against a noise-aware VELR ensemble (the quickstart's process reward) with a KL term:
/// the loss is `lambda * (margin - r) + beta * KL` of the ensemble's lower confidence bound, the
/// KL is 0 at the first step (the policy is the initial model) and positive after, the
/// policy moves and the members stay frozen.
#[test]
fn prfl_with_a_noise_aware_velr_ensemble() {
    let w = world();
    let ens = ensemble_reading(NoiseInput::BlockFilm)
        .with_aggregation(Aggregation::LowerConfidenceBound { k: 1.0 });
    let members_before: Vec<_> = ens
        .members
        .iter()
        .map(|m| param_snapshot(m).unwrap())
        .collect();
    let mut cfg = config(prfl(0), "prfl_velr");
    if let Method::Prfl(p) = &mut cfg.method {
        p.kl_beta = 0.5;
        p.start = Some([0, 3]); // the graded latent is never the last: the KL always applies
    }
    let _ = std::fs::remove_dir_all(&cfg.out);
    let mut t = Trainer::new(parts(
        &w,
        cfg.clone(),
        LatentRewards::Ensemble(ens),
        Brightness { poison: false },
    ))
    .unwrap();
    let policy_before = param_snapshot(&t.policy).unwrap();
    for step in 0..2 {
        let m = t.train_step().unwrap();
        let (loss, r, kl) = (m.loss.unwrap(), m.latent_reward.unwrap(), m.kl.unwrap());
        // 0 up to rounding (the autodiff and the plain forward round apart), then clearly not
        assert_eq!(kl < 1e-10, step == 0, "KL {kl} at step {step}");
        // lambda 0.1, margin 2; the untrained members score far below the margin
        let want = 0.1 * (2.0 - r) + 0.5 * kl;
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    }
    let (moved, total) =
        differing_entries(&policy_before, &param_snapshot(&t.policy).unwrap(), 0.0);
    assert!(
        moved > 0 && total > 0,
        "policy: {moved} of {total} entries moved"
    );
    let LatentRewards::Ensemble(after) = &t.reward else {
        unreachable!()
    };
    for (before, m) in members_before.iter().zip(&after.members) {
        let (moved, total) = differing_entries(before, &param_snapshot(m).unwrap(), 0.0);
        assert!(
            moved == 0 && total > 0,
            "member: {moved} of {total} entries moved"
        );
    }
    let _ = std::fs::remove_dir_all(&cfg.out);
}
