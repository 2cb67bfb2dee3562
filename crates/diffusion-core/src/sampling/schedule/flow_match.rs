//! Flow matching with the SD3 / Wan timestep shift, compatible with diffusers'
//! `FlowMatchEulerDiscreteScheduler` (static shift, no dynamic shifting).

use burn::config::Config;

use super::Schedule;
use crate::error::invalid;

/// The SD3 / Wan2.1 timestep shift: `sigma' = shift * sigma / (1 + (shift - 1) * sigma)`.
///
/// Maps `[0, 1]` onto itself monotonically; `shift > 1` spends more steps at high noise
/// (Esser et al. 2024, SD3, eq. 23; Wan2.1 uses shift 5 at 480p).
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// Inverse of [`shift_sigma`]: `sigma = sigma' / (shift - (shift - 1) * sigma')`.
pub fn unshift_sigma(shifted: f64, shift: f64) -> f64 {
    shifted / (shift - (shift - 1.0) * shifted)
}

/// Configuration of a shifted flow-matching sampling schedule.
#[derive(Config, Debug, PartialEq)]
pub struct FlowMatchScheduleConfig {
    /// Number of sampling steps.
    pub num_steps: usize,
    /// Timestep shift (1 = none; Wan2.1 uses 5 for training at 480p, 3 for some samplers).
    #[config(default = 1.0)]
    pub shift: f64,
    /// Number of training timesteps; the model sees `t = num_train_timesteps * sigma`.
    #[config(default = 1000)]
    pub num_train_timesteps: usize,
}

impl FlowMatchScheduleConfig {
    /// Builds the schedule exactly as diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps`
    /// does with a static shift: timesteps evenly spaced from `T * sigma_max` to `T * sigma_min`
    /// where `sigma_max = 1` and `sigma_min = shift(1 / T)` are the ends of the shifted training
    /// grid, divided by `T`, shifted, and closed with a terminal `0`.
    ///
    /// (diffusers shifts the low end twice, once on the training grid and once here; we keep
    /// that quirk so samplers and timesteps agree with reference checkpoints bit for bit.)
    pub fn init(&self) -> crate::Result<Schedule> {
        if self.num_steps == 0 {
            return Err(invalid("num_steps", "must be at least 1"));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(invalid(
                "shift",
                format!("must be finite and > 0, got {}", self.shift),
            ));
        }
        if self.num_train_timesteps < 2 {
            return Err(invalid("num_train_timesteps", "must be at least 2"));
        }
        let t_train = self.num_train_timesteps as f64;
        // diffusers computes this grid in float32; we mirror it to keep parity at 1e-6.
        let sigma_max = shift_sigma(1.0, self.shift) as f32 as f64;
        let sigma_min = (shift_sigma(1.0 / t_train, self.shift) as f32) as f64;
        let (t_hi, t_lo) = (sigma_max * t_train, sigma_min * t_train);
        let n = self.num_steps;
        let mut sigmas: Vec<f64> = (0..n)
            .map(|i| {
                let frac = if n == 1 {
                    0.0
                } else {
                    i as f64 / (n - 1) as f64
                };
                let t = t_hi + (t_lo - t_hi) * frac;
                // clamp round-off: shift(1) can come out as 1 + 1 ulp
                shift_sigma(t / t_train, self.shift).min(1.0)
            })
            .collect();
        let timesteps = sigmas.iter().map(|s| s * t_train).collect();
        sigmas.push(0.0);
        Schedule::new(sigmas, timesteps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_one_is_identity_and_endpoints_fixed() {
        assert_eq!(shift_sigma(0.3, 1.0), 0.3);
        assert_eq!(shift_sigma(0.0, 5.0), 0.0);
        assert_eq!(shift_sigma(1.0, 5.0), 1.0);
        // shift 3 at 0.5: 1.5 / 2 = 0.75
        assert!((shift_sigma(0.5, 3.0) - 0.75).abs() < 1e-12);
        assert!((unshift_sigma(0.75, 3.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn unshifted_schedule_by_hand() {
        // 4 steps, no shift, T = 1000: linspace(1000, 1, 4) / 1000 = 1, 0.667, 0.334, 0.001.
        let s = FlowMatchScheduleConfig::new(4).init().unwrap();
        let expect = [1.0, 0.667, 0.334, 0.001, 0.0];
        for (a, b) in s.sigmas().iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert!((s.timesteps()[1] - 667.0).abs() < 1e-3);
    }

    #[test]
    fn rejects_bad_config() {
        assert!(FlowMatchScheduleConfig::new(0).init().is_err());
        assert!(FlowMatchScheduleConfig::new(3)
            .with_shift(-1.0)
            .init()
            .is_err());
        assert!(FlowMatchScheduleConfig::new(3)
            .with_shift(f64::NAN)
            .init()
            .is_err());
    }
}
