//! The [`Learner`]: the run services every method shares.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use burn::{
    optim::Optimizer,
    record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder},
    tensor::backend::AutodiffBackend,
};
use diffusion_core::{
    io::atomic::{remove_stale_temporaries, write_atomic},
    io::probe::{device_reserved_bytes, HeapProbe},
    io::progress::Progress,
    sampling::rollout::step_rng,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::{
    checkpoint::{CheckpointReader, CheckpointWriter},
    error::{config_error, Result, TrainError},
    evaluation::Evaluate,
    guard::{Guard, GuardConfig},
    method::Method,
    metrics::{MetricsLog, StepMetrics},
    policy::{Policy, PolicyOptimizer},
    OptimConfig,
};

/// The largest number of steps a run may ask for.
pub const MAX_STEPS: usize = 100_000_000;

/// The settings of a run that do not belong to any method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnerConfig {
    /// Training steps.
    pub steps: usize,
    /// The policy's optimiser.
    pub optim: OptimConfig,
    /// What the guard tolerates.
    #[serde(default)]
    pub guard: GuardConfig,
    /// Seed of every step's randomness (each step draws from `(seed, step)`).
    pub seed: u64,
    /// Evaluate every this many steps (0: only after the last step).
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (0: only after the last step).
    pub checkpoint_every: usize,
    /// Folder of the checkpoint (`checkpoint/`) and the metrics log (`metrics.jsonl`).
    pub out: PathBuf,
}

impl LearnerConfig {
    /// A run of `steps` steps writing to `out`, with the default optimiser and guard, seed 0,
    /// evaluation and a checkpoint every 10% of the steps.
    pub fn new(steps: usize, out: impl Into<PathBuf>) -> Self {
        Self {
            steps,
            optim: OptimConfig::default(),
            guard: GuardConfig::default(),
            seed: 0,
            eval_every: (steps / 10).max(1),
            checkpoint_every: (steps / 10).max(1),
            out: out.into(),
        }
    }

    /// Checks every value.
    ///
    /// # Errors
    /// `Config` naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(config_error(
                "steps",
                format!("{} not in 1..={MAX_STEPS}", self.steps),
            ));
        }
        self.optim.validate().map_err(|e| match e {
            diffusion_core::CoreError::InvalidConfig { field, reason } => {
                config_error(format!("optim.{field}"), reason)
            }
            other => other.into(),
        })?;
        self.guard.validate()
    }
}

/// What `checkpoint/state.json` holds: the step its files belong to, with their checksums, and
/// what the run must match to resume from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LearnerState {
    step: usize,
    guard: Guard,
    config: LearnerConfig,
    method: String,
    settings: serde_json::Value,
    files: BTreeMap<String, u32>,
}

/// Runs a [`Method`] on a policy with the services every method shares: the AdamW optimiser
/// with its learning-rate schedule and global clipping, the guard on loss, gradients and
/// updated weights ([`crate::Guard`]), JSONL metrics, a progress bar, held-out evaluation,
/// atomic checksummed checkpoints and exact resume.
///
/// [`Learner::new`] resumes from `out/checkpoint` when it holds a checkpoint of the same
/// config and method settings, and stops with an error (deleting nothing) when it holds one it
/// cannot read or of another run.
pub struct Learner<B: AutodiffBackend, M: Policy<B>, T: Method<B, M>> {
    config: LearnerConfig,
    optim: PolicyOptimizer<B, M>,
    method: T,
    evaluator: Option<Box<dyn Evaluate<M::InnerModule>>>,
    step: usize,
    /// Opened once the checkpoint (if any) was read, so a refused resume touches nothing.
    log: Option<MetricsLog>,
    device: B::Device,
}

impl<B: AutodiffBackend, M: Policy<B>, T: Method<B, M>> Learner<B, M, T> {
    /// A learner for `method` on `policy` (its weights at the start of the run; methods keep a
    /// frozen copy as their KL reference), resumed from `config.out/checkpoint` when one is
    /// there.
    ///
    /// # Errors
    /// `Config` for bad settings; `Checkpoint` when a checkpoint is there that cannot be read or
    /// belongs to another run; errors of the method's `init`.
    pub fn new(config: LearnerConfig, policy: M, mut method: T) -> Result<Self> {
        config.validate()?;
        method.init(&policy)?;
        let device = policy
            .devices()
            .first()
            .cloned()
            .ok_or_else(|| config_error("policy", "the policy has no parameters"))?;
        let mut learner = Self {
            optim: PolicyOptimizer::new(policy, config.optim.clone(), Guard::new(config.guard)),
            method,
            evaluator: None,
            step: 0,
            log: None,
            device,
            config,
        };
        learner.resume()?;
        learner.log = Some(MetricsLog::open(&learner.config.out.join("metrics.jsonl"))?);
        Ok(learner)
    }

    /// Evaluates the policy with `evaluator` every `eval_every` steps and after the last.
    pub fn with_evaluator(mut self, evaluator: impl Evaluate<M::InnerModule> + 'static) -> Self {
        self.evaluator = Some(Box::new(evaluator));
        self
    }

    /// The run's settings.
    pub fn config(&self) -> &LearnerConfig {
        &self.config
    }

    /// The policy being trained.
    pub fn policy(&self) -> &M {
        self.optim.policy()
    }

    /// The trained policy.
    pub fn into_policy(self) -> M {
        self.optim.into_policy()
    }

    /// The method.
    pub fn method(&self) -> &T {
        &self.method
    }

    /// The method, for changes between steps (a new prompt set, a reward refreshed elsewhere);
    /// its settings must stay those of the checkpoint for a resume to match.
    pub fn method_mut(&mut self) -> &mut T {
        &mut self.method
    }

    /// The next step to run (the number of steps done).
    pub fn step(&self) -> usize {
        self.step
    }

    /// Steps the guard rejected so far.
    pub fn rejected(&self) -> usize {
        self.optim.guard.rejected
    }

    /// The evaluator's score of the current policy (`None` without an evaluator).
    ///
    /// # Errors
    /// The evaluator's errors.
    pub fn evaluate(&self) -> Result<Option<f64>> {
        self.evaluator
            .as_ref()
            .map(|e| e.evaluate(&self.optim.policy().valid()))
            .transpose()
    }

    fn checkpoint_dir(&self) -> PathBuf {
        self.config.out.join("checkpoint")
    }

    /// Runs the remaining steps with a progress bar. Returns the metrics of the steps run.
    ///
    /// # Errors
    /// The first step's error.
    pub fn run(&mut self) -> Result<Vec<StepMetrics>> {
        let total = self.config.steps;
        let mut pb = Progress::new(total - self.step.min(total), self.method.name());
        let mut out = Vec::new();
        while self.step < total {
            let m = self.train_step()?;
            pb.tick(format!(
                "reward {:.3}{}",
                m.latent_reward.unwrap_or(f64::NAN),
                m.heldout_reward
                    .map(|r| format!(" held-out {r:.3}"))
                    .unwrap_or_default()
            ));
            out.push(m);
        }
        Ok(out)
    }

    /// Runs one step of the method, logs it, evaluates and checkpoints when due.
    ///
    /// # Errors
    /// The method's errors; `Diverged` past the guard's limit; IO errors.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let step = self.step;
        let cfg = &self.config;
        let lr = cfg.optim.schedule.at(cfg.optim.lr, step, cfg.steps);
        self.optim.lr = lr;
        self.optim.step = step;
        let heap = HeapProbe::start();
        let _ = B::sync(&self.device);
        let base_reserved = device_reserved_bytes::<B>(&self.device);
        let t0 = Instant::now();
        let mut rng = step_rng(cfg.seed, step);
        // backend-side randomness (adapter dropout) is a function of (seed, step) too, so a
        // resumed run draws what the uninterrupted one drew
        B::seed(&self.device, rng.clone().next_u64());
        let report = self.method.step(step, &mut self.optim, &mut rng)?;
        let _ = B::sync(&self.device);
        let step_seconds = t0.elapsed().as_secs_f64();
        let peak_bytes = match (base_reserved, device_reserved_bytes::<B>(&self.device)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => heap.peak().map(|p| p as u64),
        };
        self.step += 1;
        let every = self.config.eval_every;
        let heldout_reward =
            if (every > 0 && self.step % every == 0) || self.step == self.config.steps {
                self.evaluate()?
            } else {
                None
            };
        let update = report.update.as_ref();
        let metrics = StepMetrics {
            step,
            loss: update.filter(|u| u.applied()).map(|u| u.loss),
            latent_reward: report.reward,
            kl: report.kl,
            sft_loss: report.sft_loss,
            grad_norm: update.map(|u| u.grad_norm),
            lr,
            heldout_reward,
            uncertainty: report.uncertainty,
            step_seconds,
            peak_bytes,
            skipped: self.optim.guard.rejected,
            extra: report.extra,
        };
        if let Some(log) = &mut self.log {
            log.write(&metrics)?;
        }
        let ck = self.config.checkpoint_every;
        if (ck > 0 && self.step % ck == 0) || self.step == self.config.steps {
            self.save_checkpoint()?;
        }
        Ok(metrics)
    }

    /// Writes the policy, the optimiser state, the method's state and `state.json` (last, with
    /// every file's checksum) into `out/checkpoint`, then removes the previous checkpoint's
    /// files. A crash at any point leaves a checkpoint that loads.
    ///
    /// # Errors
    /// IO errors.
    pub fn save_checkpoint(&self) -> Result<()> {
        let dir = self.checkpoint_dir();
        let tag = format!("{:08}", self.step);
        let mut w = CheckpointWriter::new(&dir, &tag);
        w.record("policy.mpk", self.optim.policy().clone())?;
        let optim = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
            .record(self.optim.optimizer().to_record(), ())
            .map_err(|e| TrainError::Checkpoint {
                path: dir.join("optim.mpk"),
                reason: e.to_string(),
            })?;
        w.bytes("optim.mpk", &optim)?;
        self.method.save(&mut w)?;
        let state = LearnerState {
            step: self.step,
            guard: self.optim.guard,
            config: self.config.clone(),
            method: self.method.name().to_string(),
            settings: self.method.settings(),
            files: w.files,
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|e| TrainError::Checkpoint {
            path: dir.join("state.json"),
            reason: e.to_string(),
        })?;
        write_atomic(&dir.join("state.json"), &json)?;
        // the previous checkpoint's files are no longer referenced
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name != "state.json"
                    && !state.files.contains_key(&name)
                    && !name.starts_with('.')
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Without `state.json`, the checkpoint folder may only hold files of the first
    /// checkpoint, whose write a crash cut short before its state: the run starts over and
    /// writes them again, identical. A file of any other step is a checkpoint whose state was
    /// lost (deleted, say): refused, and nothing is touched.
    fn check_no_lost_state(&self) -> Result<()> {
        let dir = self.checkpoint_dir();
        let ck = self.config.checkpoint_every;
        let first = if ck > 0 {
            ck.min(self.config.steps)
        } else {
            self.config.steps
        };
        let tag = format!("-{first:08}");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !name.contains(&tag) {
                return Err(TrainError::Checkpoint {
                    path: dir.join("state.json"),
                    reason: format!(
                        "is missing, but the folder holds `{name}`, a file of a later checkpoint \
                         whose state was lost; the folder was left as it is: move it away, or \
                         use another `out` folder"
                    ),
                });
            }
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<()> {
        let dir = self.checkpoint_dir();
        remove_stale_temporaries(&dir)?;
        let path = dir.join("state.json");
        let err = |reason: String| TrainError::Checkpoint {
            path: path.clone(),
            reason: format!("{reason}; the checkpoint was left as it is"),
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.check_no_lost_state()
            }
            Err(e) => return Err(err(format!("cannot be read: {e}"))),
        };
        let state: LearnerState = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("is not a checkpoint state: {e}")))?;
        let same_run = LearnerConfig {
            out: self.config.out.clone(),
            ..state.config.clone()
        } == self.config;
        if !same_run
            || state.method != self.method.name()
            || state.settings != self.method.settings()
        {
            return Err(err(format!(
                "was written by another run ({} with other settings); use another `out` folder \
                 or start over",
                state.method
            )));
        }
        let tag = format!("{:08}", state.step);
        let reader = CheckpointReader::new(&dir, &tag, state.files.clone());
        let policy = reader.record("policy.mpk", self.optim.policy().clone(), &self.device)?;
        let optim_path = dir.join(CheckpointWriter::file_name("optim.mpk", &tag));
        let optim = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
            .load(reader.bytes("optim.mpk")?, &self.device)
            .map_err(|e| TrainError::Checkpoint {
                path: optim_path,
                reason: e.to_string(),
            })?;
        self.method.load(&reader, &self.device)?;
        self.optim.restore(policy, optim);
        self.optim.guard = state.guard;
        self.step = state.step;
        Ok(())
    }
}
