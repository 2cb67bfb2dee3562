//! Evaluation metrics of reward models: MSE and Pearson correlation for regression (VELR tables
//! 3, 4 and 6), pairwise accuracy for preferences (PRFL).

use serde::{Deserialize, Serialize};

/// Mean squared error. `NaN` for empty or mismatched inputs.
pub fn mse(pred: &[f32], target: &[f32]) -> f64 {
    if pred.is_empty() || pred.len() != target.len() {
        return f64::NAN;
    }
    pred.iter()
        .zip(target)
        .map(|(p, t)| (*p as f64 - *t as f64).powi(2))
        .sum::<f64>()
        / pred.len() as f64
}

/// Pearson correlation coefficient. `NaN` when either input is constant, empty or the lengths
/// differ.
pub fn pearson(x: &[f32], y: &[f32]) -> f64 {
    if x.len() < 2 || x.len() != y.len() {
        return f64::NAN;
    }
    let n = x.len() as f64;
    let mx = x.iter().map(|v| *v as f64).sum::<f64>() / n;
    let my = y.iter().map(|v| *v as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (*a as f64 - mx, *b as f64 - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// Fraction of pairs whose winner scores strictly higher than its loser (ties count half).
/// `NaN` for no pairs.
pub fn pairwise_accuracy(winner: &[f32], loser: &[f32]) -> f64 {
    if winner.is_empty() || winner.len() != loser.len() {
        return f64::NAN;
    }
    winner
        .iter()
        .zip(loser)
        .map(|(w, l)| match w.partial_cmp(l) {
            Some(std::cmp::Ordering::Greater) => 1.0,
            Some(std::cmp::Ordering::Equal) => 0.5,
            _ => 0.0,
        })
        .sum::<f64>()
        / winner.len() as f64
}

/// Regression quality on one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Mean squared error.
    pub mse: f64,
    /// Pearson correlation between predictions and targets.
    pub pearson: f64,
}

impl RegressionMetrics {
    /// Both metrics of predictions against targets.
    pub fn of(pred: &[f32], target: &[f32]) -> Self {
        Self {
            mse: mse(pred, target),
            pearson: pearson(pred, target),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn by_hand() {
        assert!((mse(&[1.0, 2.0], &[0.0, 4.0]) - 2.5).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // x = (0, 1, 2, 3), y = (0, 1, 1, 0): cov 0
        assert!(pearson(&[0.0, 1.0, 2.0, 3.0], &[0.0, 1.0, 1.0, 0.0]).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[0.0, 1.0]).is_nan());
        assert_eq!(
            pairwise_accuracy(&[1.0, 0.0, 2.0, 5.0], &[0.0, 1.0, 2.0, 4.0]),
            0.625
        );
        assert!(mse(&[], &[]).is_nan());
    }

    proptest! {
        #[test]
        fn pearson_is_bounded_and_affine_invariant(
            xs in prop::collection::vec(-10f32..10.0, 3..40),
            a in 0.5f32..3.0,
            b in -2f32..2.0,
        ) {
            let ys: Vec<f32> = xs.iter().enumerate().map(|(i, x)| x * x - i as f32).collect();
            let r = pearson(&xs, &ys);
            prop_assume!(r.is_finite());
            prop_assert!((-1.0 - 1e-9..=1.0 + 1e-9).contains(&r));
            let scaled: Vec<f32> = xs.iter().map(|x| a * x + b).collect();
            prop_assert!((pearson(&scaled, &ys) - r).abs() < 1e-3);
        }
    }
}
