//! The flow-matching UniPC multistep sampler that Wan2.1's pipeline uses by default (Zhao et al.
//! 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models",
//! arXiv 2302.04867), as diffusers' `UniPCMultistepScheduler` runs it with `use_flow_sigmas`,
//! `prediction_type = "flow_prediction"`, `predict_x0`, the `bh2` variant, lower orders at the
//! last steps and a final sigma of zero.

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::{
    error::{invalid, Result},
    models::model::VelocityModel,
};

/// Settings of [`UniPc`] (Wan2.1: order 2, shift 3 at 480p and 5 at 720p, 50 steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniPcConfig {
    /// Sampling steps (model evaluations).
    pub steps: usize,
    /// Flow shift: `sigma -> shift sigma / (1 + (shift - 1) sigma)`.
    pub flow_shift: f64,
    /// Solver order, 1 to 3 (`solver_order`).
    pub order: usize,
    /// Lower the order over the last steps (`lower_order_final`).
    pub lower_order_final: bool,
    /// Timestep range of training (`num_train_timesteps`); the model sees `sigma * this`.
    pub train_timesteps: usize,
}

impl UniPcConfig {
    /// Wan2.1's scheduler: order 2, lower order at the end, 1000 training timesteps.
    pub fn wan21(steps: usize, flow_shift: f64) -> Self {
        Self {
            steps,
            flow_shift,
            order: 2,
            lower_order_final: true,
            train_timesteps: 1000,
        }
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > 10_000 {
            return Err(invalid(
                "unipc.steps",
                format!("{} not in 1..=10000", self.steps),
            ));
        }
        if !(self.flow_shift.is_finite() && self.flow_shift > 0.0) {
            return Err(invalid("unipc.flow_shift", "must be finite and > 0"));
        }
        if !(1..=3).contains(&self.order) {
            return Err(invalid(
                "unipc.order",
                format!("{} not in 1..=3", self.order),
            ));
        }
        if self.train_timesteps == 0 {
            return Err(invalid("unipc.train_timesteps", "must be > 0"));
        }
        Ok(())
    }

    /// The `steps + 1` sigmas (the last is zero), as diffusers computes them (f64, stored f32).
    pub fn sigmas(&self) -> Vec<f32> {
        let n = self.steps;
        let t = self.train_timesteps as f64;
        // np.linspace(1, 1 / T, n + 1)[:-1]
        let mut sigmas: Vec<f64> = (0..n)
            .map(|i| 1.0 + (1.0 / t - 1.0) * i as f64 / n as f64)
            .map(|s| self.flow_shift * s / (1.0 + (self.flow_shift - 1.0) * s))
            .collect();
        if (sigmas[0] - 1.0).abs() < 1e-6 {
            sigmas[0] -= 1e-6;
        }
        sigmas.iter().map(|&s| s as f32).chain([0.0]).collect()
    }

    /// The model's timestep at each step: `sigma * T` truncated to an integer, as diffusers
    /// stores them (int64).
    pub fn timesteps(&self) -> Vec<i64> {
        let n = self.steps;
        let t = self.train_timesteps as f64;
        (0..n)
            .map(|i| {
                let s = 1.0 + (1.0 / t - 1.0) * i as f64 / n as f64;
                let mut s = self.flow_shift * s / (1.0 + (self.flow_shift - 1.0) * s);
                if i == 0 && (s - 1.0).abs() < 1e-6 {
                    s -= 1e-6;
                }
                (s * t) as i64
            })
            .collect()
    }
}

/// `(alpha, sigma, lambda = log alpha - log sigma)` of a flow sigma.
fn lambda(sigma: f64) -> (f64, f64, f64) {
    let alpha = 1.0 - sigma;
    (alpha, sigma, alpha.ln() - sigma.ln())
}

/// Solves the `n x n` system `a x = b` by Gaussian elimination with partial pivoting (n <= 3).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            for k in col..n {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// `h phi_1`, `B(h)` and the system `R`, `b` of UniPC's bh2 update for `order` given the
/// ratios `rks` (the last is 1).
fn coefficients(h: f64, rks: &[f64], order: usize) -> (f64, f64, Vec<Vec<f64>>, Vec<f64>) {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let b_h = hh.exp_m1();
    let mut factorial = 1.0;
    let mut r = Vec::with_capacity(order);
    let mut b = Vec::with_capacity(order);
    for i in 1..=order {
        r.push(rks.iter().map(|rk| rk.powi(i as i32 - 1)).collect());
        b.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    (h_phi_1, b_h, r, b)
}

/// The sampler's state over one trajectory: call [`UniPc::step`] once per
/// [`UniPc::timestep`] with the model's velocity there.
///
/// # Shapes
/// - samples and velocities: any shape `D`, all alike
#[derive(Debug, Clone)]
pub struct UniPc<B: Backend, const D: usize> {
    config: UniPcConfig,
    sigmas: Vec<f64>,
    timesteps: Vec<i64>,
    /// The clean-sample predictions of the last `order` steps, oldest first.
    x0s: Vec<Tensor<B, D>>,
    last_sample: Option<Tensor<B, D>>,
    this_order: usize,
    lower_order_nums: usize,
    index: usize,
}

impl<B: Backend, const D: usize> UniPc<B, D> {
    /// A fresh trajectory.
    pub fn new(config: UniPcConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            sigmas: config.sigmas().into_iter().map(f64::from).collect(),
            timesteps: config.timesteps(),
            config,
            x0s: Vec::new(),
            last_sample: None,
            this_order: 1,
            lower_order_nums: 0,
            index: 0,
        })
    }

    /// The model's timestep for the next step, `None` when the trajectory is done.
    pub fn timestep(&self) -> Option<f64> {
        self.timesteps.get(self.index).map(|&t| t as f64)
    }

    /// The sigma of the current sample.
    pub fn sigma(&self) -> f64 {
        self.sigmas[self.index.min(self.sigmas.len() - 1)]
    }

    /// One step: the corrector on `sample` (from the second step on), then the predictor to
    /// the next sigma. `velocity` is the model's output at `sample` and [`UniPc::timestep`].
    ///
    /// # Panics
    /// Never; a step after the last returns `sample` unchanged.
    pub fn step(&mut self, velocity: Tensor<B, D>, sample: Tensor<B, D>) -> Tensor<B, D> {
        let i = self.index;
        if i >= self.timesteps.len() {
            return sample;
        }
        let x0 = sample.clone() - velocity.mul_scalar(self.sigmas[i]);
        let sample = match self.last_sample.take() {
            Some(last) if i > 0 => self.corrector(&x0, last),
            _ => sample,
        };
        let order = self.config.order;
        if self.x0s.len() == order {
            self.x0s.remove(0);
        }
        self.x0s.push(x0);
        let this_order = if self.config.lower_order_final {
            order.min(self.timesteps.len() - i)
        } else {
            order
        };
        self.this_order = this_order.min(self.lower_order_nums + 1);
        self.last_sample = Some(sample.clone());
        let next = self.predictor(sample);
        self.lower_order_nums = (self.lower_order_nums + 1).min(order);
        self.index += 1;
        next
    }

    /// The step's `h = lambda_t - lambda_s0`, the ratios `r_k` (last 1) and the differences
    /// `(m_k - m0) / r_k` of the `order - 1` predictions before the newest `m0`; `t` and `s0`
    /// index the target and source sigmas.
    fn differences(
        &self,
        t: usize,
        s0: usize,
        order: usize,
        newest: usize,
    ) -> (f64, Vec<f64>, Vec<Tensor<B, D>>) {
        let (_, _, lambda_t) = lambda(self.sigmas[t]);
        let (_, _, lambda_s0) = lambda(self.sigmas[s0]);
        let h = lambda_t - lambda_s0;
        let m0 = &self.x0s[newest];
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for k in 1..order {
            let (_, _, lambda_si) = lambda(self.sigmas[s0 - k]);
            let rk = (lambda_si - lambda_s0) / h;
            rks.push(rk);
            d1s.push((self.x0s[newest - k].clone() - m0.clone()).div_scalar(rk));
        }
        rks.push(1.0);
        (h, rks, d1s)
    }

    /// UniP: `x_t = sigma_t / sigma_s0 x - alpha_t h phi_1 m0 - alpha_t B(h) sum rho_k D_k`.
    fn predictor(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let i = self.index;
        let order = self.this_order;
        let newest = self.x0s.len() - 1;
        let (h, rks, d1s) = self.differences(i + 1, i, order, newest);
        let (alpha_t, sigma_t, _) = lambda(self.sigmas[i + 1]);
        let sigma_s0 = self.sigmas[i];
        let (h_phi_1, b_h, r, b) = coefficients(h, &rks, order);
        let m0 = self.x0s[newest].clone();
        let mut x_t = x.mul_scalar(sigma_t / sigma_s0) - m0.mul_scalar(alpha_t * h_phi_1);
        if !d1s.is_empty() {
            let rhos = if order == 2 {
                vec![0.5]
            } else {
                let n = order - 1;
                solve(
                    r[..n].iter().map(|row| row[..n].to_vec()).collect(),
                    b[..n].to_vec(),
                )
            };
            for (rho, d) in rhos.iter().zip(d1s) {
                x_t = x_t - d.mul_scalar(alpha_t * b_h * rho);
            }
        }
        x_t
    }

    /// UniC: the sample at sigma `i` again, from `last_sample` (at sigma `i - 1`), the
    /// predictions before and the new prediction `model_t`.
    fn corrector(&self, model_t: &Tensor<B, D>, last_sample: Tensor<B, D>) -> Tensor<B, D> {
        let i = self.index;
        let order = self.this_order;
        let newest = self.x0s.len() - 1;
        let (h, rks, d1s) = self.differences(i, i - 1, order, newest);
        let (alpha_t, sigma_t, _) = lambda(self.sigmas[i]);
        let sigma_s0 = self.sigmas[i - 1];
        let (h_phi_1, b_h, r, b) = coefficients(h, &rks, order);
        let rhos = if order == 1 { vec![0.5] } else { solve(r, b) };
        let m0 = self.x0s[newest].clone();
        let mut x_t =
            last_sample.mul_scalar(sigma_t / sigma_s0) - m0.clone().mul_scalar(alpha_t * h_phi_1);
        for (rho, d) in rhos.iter().zip(d1s) {
            x_t = x_t - d.mul_scalar(alpha_t * b_h * rho);
        }
        let rho_t = *rhos.last().expect("order >= 1");
        x_t - (model_t.clone() - m0).mul_scalar(alpha_t * b_h * rho_t)
    }
}

/// Samples from pure noise with UniPC, with classifier-free guidance when `negative` is given
/// (`v = v_neg + scale (v - v_neg)`, Wan2.1's default scale is 5).
///
/// # Shapes
/// - `noise`: `[B, C, F, H, W]`, `text`: `[B, S, D]`, `negative`: `[B, S, D]` -> `[B, C, F, H, W]`
pub fn sample_unipc<B: Backend, M: VelocityModel<B>>(
    model: &M,
    noise: Tensor<B, 5>,
    text: Tensor<B, 3>,
    negative: Option<(Tensor<B, 3>, f64)>,
    config: UniPcConfig,
) -> Result<Tensor<B, 5>> {
    model.check_input(noise.dims(), text.dims())?;
    let mut sampler = UniPc::new(config)?;
    let b = noise.dims()[0];
    let mut x = noise;
    while let Some(t) = sampler.timestep() {
        let ts = Tensor::<B, 1>::full([b], t, &x.device());
        let v = model.velocity(x.clone(), ts.clone(), text.clone());
        let v = match &negative {
            Some((neg, scale)) => {
                let vn = model.velocity(x.clone(), ts, neg.clone());
                vn.clone() + (v - vn).mul_scalar(*scale)
            }
            None => v,
        };
        x = sampler.step(v, x);
    }
    Ok(x)
}
