//! Faults around the Learner: poisoned updates are rejected and never reach a checkpoint;
//! resume refuses a checkpoint it cannot read, or of another run, and deletes nothing; a file
//! changed on disk is named; a crashed writer's leftovers are cleaned.

use std::path::Path;

use burn::{
    backend::Autodiff,
    module::{Module, ModuleVisitor, Param},
    tensor::{backend::Backend, Tensor},
};
use diffusion_core::{backend::DefaultBackend, sampling::rollout::randn, WanConfig};
use rand::{rngs::StdRng, SeedableRng};
use refl_trainer::*;

type B = DefaultBackend;
type AD = Autodiff<B>;
type Dit = diffusion_core::WanTransformer<AD>;

const SHAPE: [usize; 4] = [4, 1, 4, 4];

fn policy() -> Dit {
    let dev = Default::default();
    AD::seed(&dev, 9);
    WanConfig::tiny().init(&dev).unwrap()
}

fn sft(poison: bool) -> Sft<AD> {
    let dev = Default::default();
    let mut rng = StdRng::seed_from_u64(1);
    let [c, f, h, w] = SHAPE;
    let latents = randn::<B, 5>([4, c, f, h, w], &mut rng, &dev);
    let latents = if poison {
        latents.mul_scalar(f32::NAN)
    } else {
        latents
    };
    let data = SftData::new(latents, randn([4, 3, 16], &mut rng, &dev)).unwrap();
    Sft::new(
        SftConfig {
            batch: 2,
            timesteps: diffusion_core::train::loss::TimestepSampling::Uniform { shift: 3.0 },
            shards: 1,
        },
        data,
    )
    .unwrap()
}

fn config(name: &str) -> LearnerConfig {
    let out = std::env::temp_dir().join(format!("faults_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut c = LearnerConfig::new(4, out);
    c.optim.lr = 1e-3;
    c.checkpoint_every = 2;
    c
}

/// Every float parameter's values, in visiting order (parameter ids differ between a model and
/// its reload).
fn values(m: &Dit) -> Vec<Vec<f32>> {
    struct Values(Vec<Vec<f32>>);
    impl ModuleVisitor<AD> for Values {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<AD, D>>) {
            self.0.push(p.val().into_data().to_vec().unwrap());
        }
    }
    let mut v = Values(Vec::new());
    m.visit(&mut v);
    v.0
}

/// The policy of the checkpoint in `dir`, which must be of step `step`.
fn checkpoint_policy(dir: &Path, step: usize) -> Dit {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("checkpoint/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], step);
    let file = dir.join(format!("checkpoint/policy-{step:08}.mpk"));
    diffusion_core::io::checkpoint::load_record(policy(), &file, &Default::default()).unwrap()
}

#[test]
fn poisoned_updates_are_rejected_and_never_checkpointed() {
    let start = values(&policy());
    // a weight decay that blows the weights up, an update far larger than the weights, a NaN
    // loss: each step is rejected, the weights stay, the run stops past the limit
    let mut huge_decay = config("decay");
    huge_decay.optim.weight_decay = 1e30;
    let mut huge_step = config("step");
    huge_step.optim.lr = 10.0;
    huge_step.guard.max_update_ratio = Some(1e-3);
    for (cfg, method) in [
        (huge_decay, sft(false)),
        (huge_step, sft(false)),
        (config("nan"), sft(true)),
    ] {
        let mut cfg = cfg;
        (cfg.steps, cfg.guard.max_rejected) = (2, 2);
        let mut l = Learner::new(cfg.clone(), policy(), method).unwrap();
        let metrics = l.run().unwrap();
        assert!(metrics.iter().all(|m| m.loss.is_none()), "{metrics:?}");
        assert_eq!(l.rejected(), 2);
        assert!(
            values(l.policy()) == start,
            "{}: rejected steps changed the weights",
            cfg.out.display()
        );
        // the checkpoint written after the last step holds the untouched weights
        assert!(
            values(&checkpoint_policy(&cfg.out, 2)) == start,
            "the checkpoint differs from the initial weights"
        );
        let _ = std::fs::remove_dir_all(&cfg.out);
    }
    let mut cfg = config("diverge");
    cfg.optim.weight_decay = 1e30;
    cfg.guard.max_rejected = 1;
    let mut l = Learner::new(cfg.clone(), policy(), sft(false)).unwrap();
    l.train_step().unwrap();
    let err = l.train_step().unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::Diverged {
                skipped: 2,
                limit: 1,
                ..
            }
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&cfg.out);
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("checkpoint"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn resume_refuses_bad_checkpoints_and_deletes_nothing() {
    let cfg = config("resume");
    let mut l = Learner::new(cfg.clone(), policy(), sft(false)).unwrap();
    l.train_step().unwrap();
    l.train_step().unwrap();
    drop(l);
    let kept = files(&cfg.out);
    assert_eq!(
        kept,
        ["optim-00000002.mpk", "policy-00000002.mpk", "state.json"]
    );
    let state = cfg.out.join("checkpoint/state.json");
    let good = std::fs::read(&state).unwrap();

    // another run's settings
    let mut other = cfg.clone();
    other.seed = 1;
    let err = Learner::new(other, policy(), sft(false)).err().unwrap();
    assert!(err.to_string().contains("another run"), "{err}");
    let other_sft = Sft::<AD>::new(
        SftConfig {
            batch: 3,
            timesteps: diffusion_core::train::loss::TimestepSampling::Uniform { shift: 3.0 },
            shards: 1,
        },
        SftData::new(
            Tensor::zeros([2, 4, 1, 4, 4], &Default::default()),
            Tensor::zeros([2, 3, 16], &Default::default()),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(Learner::new(cfg.clone(), policy(), other_sft).is_err());

    // an unreadable state (one invalid byte), then a truncated one
    let mut bad = good.clone();
    bad[3] = 0xff;
    std::fs::write(&state, &bad).unwrap();
    let err = Learner::new(cfg.clone(), policy(), sft(false))
        .err()
        .unwrap();
    assert!(
        matches!(&err, TrainError::Checkpoint { path, .. } if path.ends_with("state.json")),
        "{err}"
    );
    std::fs::write(&state, &good[..good.len() / 2]).unwrap();
    assert!(Learner::new(cfg.clone(), policy(), sft(false)).is_err());
    std::fs::write(&state, &good).unwrap();

    // a bit flipped in the policy's file: named, with its checksum
    let file = cfg.out.join("checkpoint/policy-00000002.mpk");
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let k = flipped.len() / 2;
    flipped[k] ^= 0x10;
    std::fs::write(&file, &flipped).unwrap();
    let err = Learner::new(cfg.clone(), policy(), sft(false))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("policy-00000002.mpk") && err.to_string().contains("checksum"),
        "{err}"
    );
    // a missing file is named too
    std::fs::remove_file(&file).unwrap();
    let err = Learner::new(cfg.clone(), policy(), sft(false))
        .err()
        .unwrap();
    assert!(err.to_string().contains("policy-00000002.mpk"), "{err}");
    std::fs::write(&file, &bytes).unwrap();

    // nothing was deleted or rewritten by the refused resumes; a crashed writer's temporary
    // file is removed by the next start, which resumes
    assert_eq!(files(&cfg.out), kept);
    // (a process id above Linux's largest: no process runs under it)
    std::fs::write(
        cfg.out.join("checkpoint/.policy-00000004.mpk.tmp-4194305"),
        b"torn",
    )
    .unwrap();
    let l = Learner::new(cfg.clone(), policy(), sft(false)).unwrap();
    assert_eq!(l.step(), 2);
    assert_eq!(files(&cfg.out), kept);
    let _ = std::fs::remove_dir_all(&cfg.out);
}

/// Without `state.json`, the files of the first checkpoint (a crash before its state landed)
/// are written again from the start; files of a later checkpoint are refused and kept.
#[test]
fn a_lost_state_is_refused_unless_only_the_first_checkpoint_was_cut_short() {
    let cfg = config("lost_state");
    let state = cfg.out.join("checkpoint/state.json");
    let mut l = Learner::new(cfg.clone(), policy(), sft(false)).unwrap();
    l.train_step().unwrap();
    l.train_step().unwrap();
    drop(l);
    std::fs::remove_file(&state).unwrap();
    let kept = files(&cfg.out);
    let l = Learner::new(cfg.clone(), policy(), sft(false)).unwrap();
    assert_eq!(l.step(), 0);
    assert_eq!(files(&cfg.out), kept);

    let mut l = Learner::new(cfg.clone(), policy(), sft(false)).unwrap();
    l.run().unwrap();
    drop(l);
    std::fs::remove_file(&state).unwrap();
    let kept = files(&cfg.out);
    assert_eq!(kept, ["optim-00000004.mpk", "policy-00000004.mpk"]);
    let err = Learner::new(cfg.clone(), policy(), sft(false))
        .err()
        .unwrap();
    assert!(
        matches!(&err, TrainError::Checkpoint { path, reason }
            if path.ends_with("state.json") && reason.contains("-00000004.mpk")),
        "{err}"
    );
    assert_eq!(files(&cfg.out), kept);
    let _ = std::fs::remove_dir_all(&cfg.out);
}

/// The steps of `out/metrics.jsonl`, in order.
fn logged_steps(out: &Path) -> Vec<usize> {
    MetricsLog::read(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.step)
        .collect()
}

/// A crash at every point of a checkpoint write (the policy's record, the optimiser's, the
/// state; the k-th atomic write fails and leaves a torn temporary file): the next start
/// removes the leftovers, resumes from the last whole checkpoint and ends where the
/// uninterrupted run ends, bit for bit, with each step logged once.
#[test]
fn a_crash_at_every_point_of_a_checkpoint_write_resumes_exactly() {
    let run = |name: &str| {
        let mut cfg = config(name);
        (cfg.steps, cfg.checkpoint_every) = (3, 1);
        cfg
    };
    let reference = run("crash_reference");
    let mut l = Learner::new(reference.clone(), policy(), sft(false)).unwrap();
    l.run().unwrap();
    let want = values(l.policy());
    let _ = std::fs::remove_dir_all(&reference.out);
    let writes = ["policy", "optim", "state.json"];
    for (k, what) in writes.iter().enumerate() {
        let cfg = run(&format!("crash_{k}"));
        let mut l = Learner::new(cfg.clone(), policy(), sft(false)).unwrap();
        l.train_step().unwrap();
        diffusion_core::io::checkpoint::fail_atomic_write_after(Some(k));
        let err = l.train_step().unwrap_err();
        diffusion_core::io::checkpoint::fail_atomic_write_after(None);
        assert!(err.to_string().contains("injected"), "{what}: {err}");
        drop(l);
        assert!(
            files(&cfg.out).iter().any(|f| f.contains(".tmp-")),
            "{what}: no torn file"
        );
        let mut l = Learner::new(cfg.clone(), policy(), sft(false)).unwrap();
        assert_eq!(l.step(), 1, "crash while writing {what}");
        assert!(!files(&cfg.out).iter().any(|f| f.contains(".tmp-")));
        l.run().unwrap();
        assert!(values(l.policy()) == want, "crash while writing {what}");
        assert_eq!(
            logged_steps(&cfg.out),
            [0, 1, 2],
            "crash while writing {what}"
        );
        assert_eq!(
            files(&cfg.out),
            ["optim-00000003.mpk", "policy-00000003.mpk", "state.json"]
        );
        let _ = std::fs::remove_dir_all(&cfg.out);
    }
}

#[test]
fn a_checkpoint_of_another_shape_is_a_typed_error() {
    let cfg = config("shape");
    let mut l = Learner::new(cfg.clone(), policy(), sft(false)).unwrap();
    l.train_step().unwrap();
    l.save_checkpoint().unwrap();
    drop(l);
    // a policy of another width: the checksum holds, the shapes do not
    let dev = Default::default();
    let mut wider = WanConfig::tiny();
    wider.ffn_dim *= 2;
    let wide: Dit = wider.init(&dev).unwrap();
    let err = Learner::new(cfg.clone(), wide, sft(false)).err().unwrap();
    assert!(
        err.to_string().contains("policy-00000001.mpk") && err.to_string().contains("shape"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&cfg.out);
}

#[test]
fn a_torn_metrics_line_is_skipped_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&path).unwrap();
    log.write(&StepMetrics::default()).unwrap();
    drop(log);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"step\": 1, \"lo");
    std::fs::write(&path, text).unwrap();
    assert_eq!(MetricsLog::read(&path).unwrap().len(), 1);
    let mut log = MetricsLog::open(&path).unwrap();
    log.write(&StepMetrics {
        step: 1,
        ..Default::default()
    })
    .unwrap();
    // reopening dropped the torn record (its step is redone after a resume)
    let steps: Vec<usize> = MetricsLog::read(&path)
        .unwrap()
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(steps, [0, 1]);
}
