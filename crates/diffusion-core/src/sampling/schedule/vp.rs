//! A DDPM / variance-preserving schedule, expressed in flow-matching noise levels so that the same
//! steppers and models can walk it (for comparison with the shifted flow schedule).

use burn::config::Config;

use super::Schedule;
use crate::error::invalid;

/// How DDPM betas grow over the training timesteps.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum VpBetas {
    /// `beta_t` linear from `beta_start` to `beta_end` (Ho et al. 2020).
    Linear,
    /// `sqrt(beta_t)` linear, as Stable Diffusion's `scaled_linear`.
    ScaledLinear,
}

/// Configuration of a DDPM (VP) schedule.
///
/// A VP latent `x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps` equals `(a + s) * x_sigma` with the
/// flow-matching latent at `sigma = s / (a + s)`, where `a = sqrt(ab_t)` and `s = sqrt(1 - ab_t)`.
/// [`VpScheduleConfig::init`] returns those equivalent flow-matching levels, so a VP noise
/// spacing can be sampled with the flow steppers.
#[derive(Config, Debug, PartialEq)]
pub struct VpScheduleConfig {
    /// Number of sampling steps.
    pub num_steps: usize,
    /// First beta.
    #[config(default = 0.0001)]
    pub beta_start: f64,
    /// Last beta.
    #[config(default = 0.02)]
    pub beta_end: f64,
    /// Beta growth.
    #[config(default = "VpBetas::Linear")]
    pub betas: VpBetas,
    /// Number of training timesteps.
    #[config(default = 1000)]
    pub num_train_timesteps: usize,
}

impl VpScheduleConfig {
    /// Cumulative products `alpha_bar_t` for `t = 0 .. num_train_timesteps`.
    pub fn alphas_cumprod(&self) -> crate::Result<Vec<f64>> {
        let n = self.num_train_timesteps;
        if n < 2 {
            return Err(invalid("num_train_timesteps", "must be at least 2"));
        }
        let ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !ok(self.beta_start) || !ok(self.beta_end) || self.beta_end < self.beta_start {
            return Err(invalid(
                "beta_start/beta_end",
                format!(
                    "need 0 < beta_start <= beta_end < 1, got {} and {}",
                    self.beta_start, self.beta_end
                ),
            ));
        }
        let mut acc = 1.0;
        Ok((0..n)
            .map(|i| {
                let f = i as f64 / (n - 1) as f64;
                let beta = match self.betas {
                    VpBetas::Linear => self.beta_start + f * (self.beta_end - self.beta_start),
                    VpBetas::ScaledLinear => {
                        let (a, b) = (self.beta_start.sqrt(), self.beta_end.sqrt());
                        (a + f * (b - a)).powi(2)
                    }
                };
                acc *= 1.0 - beta;
                acc
            })
            .collect())
    }

    /// Builds the schedule: DDPM timesteps evenly spaced from `T - 1` down to `0`, mapped to
    /// their flow-matching noise levels, closed with `0`.
    pub fn init(&self) -> crate::Result<Schedule> {
        if self.num_steps == 0 || self.num_steps > self.num_train_timesteps {
            return Err(invalid(
                "num_steps",
                format!("must be in 1..={}", self.num_train_timesteps),
            ));
        }
        let ab = self.alphas_cumprod()?;
        let last = (self.num_train_timesteps - 1) as f64;
        let n = self.num_steps;
        let timesteps: Vec<f64> = (0..n)
            .map(|i| {
                let frac = if n == 1 {
                    0.0
                } else {
                    i as f64 / (n - 1) as f64
                };
                (last * (1.0 - frac)).round()
            })
            .collect();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| {
                let ab_t = ab[t as usize];
                let (a, s) = (ab_t.sqrt(), (1.0 - ab_t).sqrt());
                s / (a + s)
            })
            .collect();
        sigmas.push(0.0);
        Schedule::new(sigmas, timesteps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphas_cumprod_by_hand() {
        let cfg = VpScheduleConfig::new(2)
            .with_num_train_timesteps(2)
            .with_beta_start(0.1)
            .with_beta_end(0.5);
        let ab = cfg.alphas_cumprod().unwrap();
        assert!((ab[0] - 0.9).abs() < 1e-12);
        assert!((ab[1] - 0.45).abs() < 1e-12);
        let s = cfg.init().unwrap();
        // t = 1: a = sqrt(.45), s = sqrt(.55)
        let want = 0.55f64.sqrt() / (0.45f64.sqrt() + 0.55f64.sqrt());
        assert!((s.sigmas()[0] - want).abs() < 1e-12);
        assert_eq!(s.timesteps(), &[1.0, 0.0]);
    }

    #[test]
    fn default_schedule_is_valid() {
        let s = VpScheduleConfig::new(50).init().unwrap();
        assert_eq!(s.num_steps(), 50);
        assert!(s.sigmas()[0] > 0.99);
    }
}
