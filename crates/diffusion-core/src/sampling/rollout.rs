//! The denoising chain with a gradient window (ImageReward ReFL, PRFL, VELR's truncated
//! mid-step backprop all pick which steps record an autodiff graph).

use std::ops::Range;

use burn::{
    module::AutodiffModule,
    tensor::{
        backend::{AutodiffBackend, Backend},
        Tensor, TensorData,
    },
};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::{
    error::{invalid, Result},
    models::model::VelocityModel,
    sampling::schedule::Schedule,
    sampling::stepper::{Guidance, StepOutput, Stepper},
};

/// Which denoising steps record an autodiff graph. Steps outside the window run on the inner
/// (non-autodiff) backend and store no graph; gradients cannot flow back through them.
///
/// For long windows on large models, run the chain on `Autodiff<B, BalancedCheckpointing>`:
/// burn checkpoints per operation, trading recomputation for memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum GradWindow {
    /// No step records a graph (sampling, rollouts for GRPO).
    #[default]
    None,
    /// Steps `start .. start + len` (PRFL: one step at a random `s`; VELR: a mid-noise span).
    Range {
        /// First step with gradients.
        start: usize,
        /// Number of steps with gradients.
        len: usize,
    },
    /// The last `k` steps of the rollout (ImageReward-style late-step ReFL).
    LastK(usize),
    /// Every step (full-chain backprop; combine with checkpointing).
    Full,
}

impl GradWindow {
    /// The steps of `steps` that record a graph.
    pub fn steps(&self, steps: &Range<usize>) -> Range<usize> {
        let r = match *self {
            GradWindow::None => 0..0,
            GradWindow::Range { start, len } => start..start + len,
            GradWindow::LastK(k) => steps.end.saturating_sub(k)..steps.end,
            GradWindow::Full => steps.clone(),
        };
        r.start.max(steps.start)..r.end.min(steps.end)
    }

    fn validate(&self, steps: &Range<usize>) -> Result<()> {
        if let GradWindow::Range { start, len } = *self {
            if len == 0 || start < steps.start || start + len > steps.end {
                return Err(invalid(
                    "window",
                    format!(
                        "Range {{ start: {start}, len: {len} }} must lie inside steps {steps:?}"
                    ),
                ));
            }
        }
        if matches!(*self, GradWindow::LastK(0)) {
            return Err(invalid("window", "LastK(0): use GradWindow::None"));
        }
        Ok(())
    }
}

/// Text conditioning for a rollout.
///
/// # Shapes
/// - `text`, `uncond`: `[B, S, D_text]`
#[derive(Debug, Clone)]
pub struct Conditioning<B: Backend> {
    /// Prompt embeddings.
    pub text: Tensor<B, 3>,
    /// Embeddings of the empty prompt, needed for classifier-free guidance.
    pub uncond: Option<Tensor<B, 3>>,
}

impl<B: Backend> Conditioning<B> {
    /// Conditioning without a negative prompt.
    pub fn new(text: Tensor<B, 3>) -> Self {
        Self { text, uncond: None }
    }
}

/// A recorded denoising chain.
///
/// `latents[k]` is the latent before step `steps.start + k`; the last entry is the latent after
/// the final step. Latents inside the gradient window carry their autodiff graph.
///
/// # Shapes
/// - each latent: `[B, C, F, H, W]`; each log-prob: `[B]`
#[derive(Debug, Clone)]
pub struct Trajectory<B: Backend> {
    /// Steps that were run.
    pub steps: Range<usize>,
    /// Latents, `steps.len() + 1` of them.
    pub latents: Vec<Tensor<B, 5>>,
    /// Noise level of each latent.
    pub sigmas: Vec<f64>,
    /// Model timestep of each step.
    pub timesteps: Vec<f64>,
    /// Per step: log-probability of the sampled transition (`None` for deterministic steps).
    pub log_probs: Vec<Option<Tensor<B, 1>>>,
    /// Per step: standard deviation of the transition.
    pub stds: Vec<f64>,
    /// Seed of the per-step noise.
    pub seed: u64,
}

impl<B: Backend> Trajectory<B> {
    /// The last latent.
    pub fn last(&self) -> &Tensor<B, 5> {
        self.latents
            .last()
            .expect("a trajectory holds at least its start latent")
    }
}

/// Standard-normal noise drawn on the host from `rng`, so a seed gives the same numbers on
/// every backend.
pub fn randn<B: Backend, const D: usize>(
    shape: [usize; D],
    rng: &mut StdRng,
    device: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// The random stream of step `step` of a rollout seeded with `seed`: independent of which steps
/// ran before, so a chain restarted at any step draws the same noise.
pub fn step_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The clean-data prediction of flow matching, `x0_hat = x - sigma v`.
pub fn predict_x0<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    v: Tensor<B, D>,
    sigma: f64,
) -> Tensor<B, D> {
    x - v.mul_scalar(sigma)
}

/// The model's (guided) velocity at one step.
pub fn guided_velocity<B: Backend, M: VelocityModel<B>>(
    model: &M,
    x: Tensor<B, 5>,
    timestep: f64,
    cond: &Conditioning<B>,
    guidance: Guidance,
) -> Tensor<B, 5> {
    let b = x.dims()[0];
    let t = Tensor::<B, 1>::full([b], timestep, &x.device());
    let v = model.velocity(x.clone(), t.clone(), cond.text.clone());
    match (&cond.uncond, guidance.needs_uncond()) {
        (Some(uncond), true) => guidance.combine(v, model.velocity(x, t, uncond.clone())),
        _ => v,
    }
}

/// A denoising chain: schedule, stepper, guidance, which steps to run and which record
/// gradients.
#[derive(Debug, Clone)]
pub struct Rollout<'a, S: Stepper> {
    /// Noise levels and timesteps.
    pub schedule: &'a Schedule,
    /// Transition rule.
    pub stepper: &'a S,
    /// Classifier-free guidance.
    pub guidance: Guidance,
    /// Steps recording a graph.
    pub window: GradWindow,
    /// Steps to run (all by default; PRFL stops right after its gradient step).
    pub steps: Range<usize>,
}

impl<'a, S: Stepper> Rollout<'a, S> {
    /// A full, gradient-free chain without guidance.
    pub fn new(schedule: &'a Schedule, stepper: &'a S) -> Self {
        Self {
            schedule,
            stepper,
            guidance: Guidance::None,
            window: GradWindow::None,
            steps: 0..schedule.num_steps(),
        }
    }

    /// Sets the gradient window.
    pub fn with_window(mut self, window: GradWindow) -> Self {
        self.window = window;
        self
    }

    /// Sets the steps to run.
    pub fn with_steps(mut self, steps: Range<usize>) -> Self {
        self.steps = steps;
        self
    }

    /// Sets classifier-free guidance.
    pub fn with_guidance(mut self, guidance: Guidance) -> Self {
        self.guidance = guidance;
        self
    }

    fn validate<B: Backend, M: VelocityModel<B>>(
        &self,
        model: &M,
        x: &Tensor<B, 5>,
        cond: &Conditioning<B>,
    ) -> Result<()> {
        let n = self.schedule.num_steps();
        if self.steps.start >= self.steps.end || self.steps.end > n {
            return Err(invalid(
                "steps",
                format!("{:?} must be a non-empty part of 0..{n}", self.steps),
            ));
        }
        if self.guidance.needs_uncond() && cond.uncond.is_none() {
            return Err(invalid(
                "guidance",
                "classifier-free guidance needs `Conditioning::uncond`",
            ));
        }
        self.window.validate(&self.steps)?;
        model.check_input(x.dims(), cond.text.dims())?;
        if let Some(u) = &cond.uncond {
            model.check_input(x.dims(), u.dims())?;
        }
        Ok(())
    }

    fn step_at<B: Backend, M: VelocityModel<B>>(
        &self,
        model: &M,
        i: usize,
        x: Tensor<B, 5>,
        cond: &Conditioning<B>,
        seed: u64,
    ) -> StepOutput<B, 5> {
        let (sigma, sigma_next, t) = self.schedule.step(i).expect("validated step index");
        let eps = self
            .stepper
            .is_stochastic()
            .then(|| randn(x.dims(), &mut step_rng(seed, i), &x.device()));
        let v = guided_velocity(model, x.clone(), t, cond, self.guidance);
        self.stepper.step(x, v, sigma, sigma_next, eps)
    }

    fn trajectory<B: Backend>(&self, start: Tensor<B, 5>, seed: u64) -> Trajectory<B> {
        let sig = self.schedule.sigmas();
        Trajectory {
            steps: self.steps.clone(),
            latents: vec![start],
            sigmas: vec![sig[self.steps.start]],
            timesteps: Vec::new(),
            log_probs: Vec::new(),
            stds: Vec::new(),
            seed,
        }
    }

    fn push<B: Backend>(&self, traj: &mut Trajectory<B>, i: usize, out: StepOutput<B, 5>) {
        traj.latents.push(out.next);
        traj.sigmas.push(self.schedule.sigmas()[i + 1]);
        traj.timesteps.push(self.schedule.timesteps()[i]);
        traj.log_probs.push(out.log_prob);
        traj.stds.push(out.std);
    }

    /// Runs the chain on an inference backend (no gradients anywhere; the window is ignored).
    ///
    /// # Shapes
    /// - `x`: `[B, C, F, H, W]` latent at `sigmas[steps.start]`
    pub fn sample<B: Backend, M: VelocityModel<B>>(
        &self,
        model: &M,
        x: Tensor<B, 5>,
        cond: &Conditioning<B>,
        seed: u64,
    ) -> Result<Trajectory<B>> {
        self.validate(model, &x, cond)?;
        let mut traj = self.trajectory(x.clone(), seed);
        let mut x = x;
        for i in self.steps.clone() {
            let out = self.step_at(model, i, x, cond, seed);
            x = out.next.clone();
            self.push(&mut traj, i, out);
        }
        Ok(traj)
    }

    /// Runs the chain on an autodiff backend: steps inside the window record a graph through
    /// the model's parameters and the incoming latent; the others run on `model.valid()`.
    ///
    /// The noise of a step depends only on `seed` and the step, not on the window, so two
    /// rollouts with the same seed and different windows produce the same latents.
    pub fn run<B, M>(
        &self,
        model: &M,
        x: Tensor<B, 5>,
        cond: &Conditioning<B>,
        seed: u64,
    ) -> Result<Trajectory<B>>
    where
        B: AutodiffBackend,
        M: VelocityModel<B> + AutodiffModule<B>,
        M::InnerModule: VelocityModel<B::InnerBackend>,
    {
        self.validate(model, &x, cond)?;
        let window = self.window.steps(&self.steps);
        let inner_model = (window.len() < self.steps.len()).then(|| model.valid());
        let inner_cond = Conditioning {
            text: cond.text.clone().inner(),
            uncond: cond.uncond.clone().map(|u| u.inner()),
        };
        let mut traj = self.trajectory(x.clone(), seed);
        let mut x = x;
        for i in self.steps.clone() {
            let out = if window.contains(&i) {
                self.step_at(model, i, x, cond, seed)
            } else {
                let m = inner_model
                    .as_ref()
                    .expect("built when some step is outside the window");
                let o = self.step_at(m, i, x.inner(), &inner_cond, seed);
                StepOutput {
                    next: Tensor::from_inner(o.next),
                    mean: Tensor::from_inner(o.mean),
                    std: o.std,
                    log_prob: o.log_prob.map(Tensor::from_inner),
                }
            };
            x = out.next.clone();
            self.push(&mut traj, i, out);
        }
        Ok(traj)
    }
}
