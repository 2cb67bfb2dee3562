//! A training run killed from outside (`SIGKILL`, no chance to clean up) at random points and
//! started again with the same config ends where the uninterrupted run ends: the same adapter
//! file, byte for byte, the same metrics for every step, and no temporary file left behind.
//! The first kill lands while the models load, each later one at a random point of the step
//! after the next one logged (rollout, update, evaluation, checkpoint write), for PRFL and for
//! VELR (whose checkpoint also holds its ensemble and replay buffer).
//!
//! The run is this test binary itself, started as a child process on the ignored test
//! [`child_run`], which trains from the config named by `LATENT_REFL_CHILD_CONFIG`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use latent_refl::{
    prelude::DefaultBackend,
    refl_trainer::{MetricsLog, StepMetrics},
    wan::{BackendName, MethodName, TrainConfig},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

const CONFIG_VAR: &str = "LATENT_REFL_CHILD_CONFIG";

/// The run a child process trains: the config file the parent wrote.
#[test]
#[ignore = "a child process of kill_9_at_random_points_then_resume_ends_as_one_run"]
fn child_run() {
    let path = std::env::var(CONFIG_VAR).expect("the parent names the config");
    let cfg = TrainConfig::load(Path::new(&path)).unwrap();
    cfg.run::<DefaultBackend>(&Default::default()).unwrap();
}

fn spawn(config: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_run", "--ignored", "--nocapture"])
        .env(CONFIG_VAR, config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs a child to its end; it must succeed.
fn run_to_end(config: &Path) {
    let status = spawn(config).wait().unwrap();
    assert!(status.success(), "{status}");
}

/// Writes a config training `method` for `steps` steps into `out`, checkpointing every step.
fn write_config(method: MethodName, steps: usize, out: &Path) -> PathBuf {
    let mut cfg = TrainConfig::template(method);
    cfg.backend = BackendName::built();
    cfg.learner.out = out.to_path_buf();
    cfg.learner.steps = steps;
    cfg.learner.checkpoint_every = 1;
    let path = out.with_extension("toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    path
}

/// Lines of the run's metrics log.
fn logged_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// The step of the run's last checkpoint, if it has one that parses.
fn checkpoint_step(out: &Path) -> Option<usize> {
    let text = std::fs::read(out.join("checkpoint/state.json")).ok()?;
    let state: serde_json::Value = serde_json::from_slice(&text).ok()?;
    state["step"].as_u64().map(|s| s as usize)
}

/// Every step's metrics without its wall time and memory, which differ between runs.
fn metrics(out: &Path) -> Vec<StepMetrics> {
    MetricsLog::read(&out.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|m| StepMetrics {
            step_seconds: 0.0,
            peak_bytes: None,
            ..m
        })
        .collect()
}

/// Files under `dir` whose names mark a write that never finished.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".tmp-") || name.contains(".old-") {
            found.push(e.path());
        } else if e.path().is_dir() {
            found.extend(temporaries(&e.path()));
        }
    }
    found
}

#[test]
fn kill_9_at_random_points_then_resume_ends_as_one_run() {
    const STEPS: usize = 5;
    const KILLS: usize = 6;
    let root = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    for method in [MethodName::Prfl, MethodName::Velr] {
        let whole = root.path().join(format!("{method}-whole"));
        let config = write_config(method, STEPS, &whole);
        let t = Instant::now();
        run_to_end(&config);
        let duration = t.elapsed();

        let killed = root.path().join(format!("{method}-killed"));
        let config = write_config(method, STEPS, &killed);
        let step = duration.div_f64(STEPS as f64 + 1.0);
        // (seconds after the start or the last logged step, checkpoint step after the kill)
        let mut at = Vec::new();
        for kill in 0..KILLS {
            let mut child = spawn(&config);
            let mut waited = Instant::now();
            if kill > 0 {
                // each later kill lands after the next logged step: the run moves on
                let before = logged_lines(&killed);
                while logged_lines(&killed) == before && child.try_wait().unwrap().is_none() {
                    std::thread::sleep(Duration::from_millis(2));
                }
                waited = Instant::now();
            }
            // then anywhere in a step: its rollout, its update, the evaluation, the checkpoint
            std::thread::sleep(step.mul_f64(rng.random_range(0.0..1.0)));
            // (a run that already ended has nothing to kill)
            let _ = child.kill();
            child.wait().unwrap();
            at.push((waited.elapsed().as_secs_f64(), checkpoint_step(&killed)));
        }
        eprintln!("{method}: (seconds into a step, checkpoint) at each kill: {at:?}");
        assert!(
            at.iter()
                .any(|&(_, s)| s.is_some_and(|s| s > 0 && s < STEPS)),
            "{method}: no kill landed mid-run: {at:?}"
        );
        run_to_end(&config);

        let lora = "pytorch_lora_weights.safetensors";
        assert!(
            std::fs::read(whole.join(lora)).unwrap() == std::fs::read(killed.join(lora)).unwrap(),
            "{method}: the adapters differ after kills at {at:?}"
        );
        let (want, got) = (metrics(&whole), metrics(&killed));
        assert_eq!(want.len(), STEPS, "{method}");
        assert_eq!(got, want, "{method}: kills at {at:?}");
        assert_eq!(temporaries(&killed), Vec::<PathBuf>::new(), "{method}");
    }
}
