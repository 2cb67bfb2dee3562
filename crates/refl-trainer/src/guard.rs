//! The NaN/inf guard of training steps.

use crate::error::{Result, TrainError};

/// Counts steps whose loss or gradient norm is not finite. Such a step's update is skipped (the
/// parameters stay as they were, so no checkpoint ever holds them); the run aborts once more
/// than `limit` steps were skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NanGuard {
    /// Steps skipped so far.
    pub skipped: usize,
    /// Most skips tolerated.
    pub limit: usize,
}

impl NanGuard {
    /// A guard that tolerates `limit` skipped steps.
    pub fn new(limit: usize) -> Self {
        Self { skipped: 0, limit }
    }

    /// Whether the step's values allow an update; counts the step otherwise.
    ///
    /// # Errors
    /// `Diverged` once more than `limit` steps were skipped.
    pub fn admit(&mut self, step: usize, values: &[f64]) -> Result<bool> {
        if values.iter().all(|v| v.is_finite()) {
            return Ok(true);
        }
        self.skipped += 1;
        if self.skipped > self.limit {
            return Err(TrainError::Diverged {
                step,
                skipped: self.skipped,
                limit: self.limit,
            });
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_then_aborts() {
        let mut g = NanGuard::new(1);
        assert!(g.admit(0, &[1.0, 2.0]).unwrap());
        assert!(!g.admit(1, &[f64::NAN]).unwrap());
        assert_eq!(g.skipped, 1);
        assert!(matches!(
            g.admit(2, &[1.0, f64::INFINITY]),
            Err(TrainError::Diverged {
                step: 2,
                skipped: 2,
                limit: 1
            })
        ));
    }
}
