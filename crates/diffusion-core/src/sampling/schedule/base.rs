use crate::error::{invalid, Result};

/// An immutable sampling schedule in flow-matching convention.
///
/// `sigmas` has `num_steps + 1` entries, strictly decreasing, from the noisiest level to exactly
/// `0.0` (clean data); step `i` moves the latent from `sigmas[i]` to `sigmas[i + 1]` and feeds
/// the model `timesteps[i]`. There is no hidden step index: a step is addressed by its number.
///
/// In flow matching `x_sigma = (1 - sigma) x0 + sigma eps`, so `sigma = 1` is pure noise.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    sigmas: Vec<f64>,
    timesteps: Vec<f64>,
}

impl Schedule {
    /// Builds a schedule from explicit noise levels (the terminal `0.0` included) and the model
    /// timesteps of each step.
    ///
    /// Fails unless `sigmas` is strictly decreasing within `(0, 1]`, ends with `0.0`, and
    /// `timesteps.len() + 1 == sigmas.len()`.
    pub fn new(sigmas: Vec<f64>, timesteps: Vec<f64>) -> Result<Self> {
        if sigmas.len() < 2 {
            return Err(invalid(
                "sigmas",
                "need at least one step (two noise levels)",
            ));
        }
        if timesteps.len() + 1 != sigmas.len() {
            return Err(invalid(
                "timesteps",
                format!(
                    "{} timesteps for {} noise levels; need one fewer timestep",
                    timesteps.len(),
                    sigmas.len()
                ),
            ));
        }
        if sigmas.iter().chain(&timesteps).any(|v| !v.is_finite()) {
            return Err(invalid("sigmas", "non-finite value"));
        }
        if *sigmas.last().unwrap_or(&1.0) != 0.0 {
            return Err(invalid("sigmas", "the last noise level must be 0"));
        }
        if sigmas[0] > 1.0 {
            return Err(invalid(
                "sigmas",
                format!("first level {} exceeds 1", sigmas[0]),
            ));
        }
        if let Some(w) = sigmas.windows(2).find(|w| w[1] >= w[0]) {
            return Err(invalid(
                "sigmas",
                format!("not strictly decreasing: {} then {}", w[0], w[1]),
            ));
        }
        Ok(Self { sigmas, timesteps })
    }

    /// Number of denoising steps.
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// Noise levels, `num_steps + 1` of them, the last being `0.0`.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Model timesteps, one per step.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `(sigma, sigma_next, timestep)` of step `i`, or `None` past the end.
    pub fn step(&self, i: usize) -> Option<(f64, f64, f64)> {
        Some((
            *self.sigmas.get(i)?,
            *self.sigmas.get(i + 1)?,
            *self.timesteps.get(i)?,
        ))
    }
}
