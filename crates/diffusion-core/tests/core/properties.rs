//! Property tests of schedules and steppers.

use crate::common::*;
use burn::tensor::{Tensor, TensorData};
use diffusion_core::{
    sampling::schedule::{shift_sigma, unshift_sigma},
    sampling::stepper::gaussian_log_prob,
    DanceGrpoSde, EulerOde, FlowGrpoSde, FlowMatchScheduleConfig, Guidance, LogProbReduction,
    Stepper, VpScheduleConfig,
};
use proptest::prelude::*;

fn latent(vals: &[f32]) -> Tensor<B, 5> {
    Tensor::from_data(
        TensorData::new(vals.to_vec(), [2, 1, 1, 2, vals.len() / 4]),
        &Default::default(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn flow_schedule_is_strictly_decreasing_with_fixed_endpoints(steps in 1usize..200, shift in 0.2f64..12.0) {
        let s = FlowMatchScheduleConfig::new(steps).with_shift(shift).init().unwrap();
        let sig = s.sigmas();
        prop_assert_eq!(sig.len(), steps + 1);
        prop_assert!((sig[0] - 1.0).abs() < 1e-6);
        prop_assert_eq!(sig[steps], 0.0);
        prop_assert!(sig.windows(2).all(|w| w[1] < w[0]));
        for (t, s) in s.timesteps().iter().zip(sig) {
            prop_assert!((t - 1000.0 * s).abs() < 1e-9);
        }
    }

    #[test]
    fn shift_formula_and_inverse(sigma in 0.0f64..=1.0, shift in 0.1f64..20.0) {
        let s = shift_sigma(sigma, shift);
        prop_assert!((s - shift * sigma / (1.0 + (shift - 1.0) * sigma)).abs() < 1e-12);
        prop_assert!((0.0..=1.0 + 1e-12).contains(&s));
        prop_assert!((unshift_sigma(s, shift) - sigma).abs() < 1e-9);
        // shift > 1 moves every level towards noise
        if shift > 1.0 { prop_assert!(s >= sigma - 1e-12); }
    }

    #[test]
    fn vp_schedule_is_strictly_decreasing(steps in 1usize..100, end in 0.005f64..0.05) {
        let s = VpScheduleConfig::new(steps).with_beta_end(end).init().unwrap();
        prop_assert!(s.sigmas().windows(2).all(|w| w[1] < w[0]));
        prop_assert_eq!(*s.sigmas().last().unwrap(), 0.0);
    }

    #[test]
    fn sde_log_prob_is_the_closed_form_density(
        x in prop::collection::vec(-2.0f32..2.0, 8),
        v in prop::collection::vec(-2.0f32..2.0, 8),
        eps in prop::collection::vec(-3.0f32..3.0, 8),
        sigma in 0.05f64..1.0,
        frac in 0.05f64..0.95,
        dance in any::<bool>(),
        sum in any::<bool>(),
    ) {
        let reduction = if sum { LogProbReduction::Sum } else { LogProbReduction::Mean };
        let sigma_next = sigma * frac;
        let out = if dance {
            DanceGrpoSde { eta: 0.5, reduction }.step(latent(&x), latent(&v), sigma, sigma_next, Some(latent(&eps)))
        } else {
            FlowGrpoSde { noise_level: 0.7, reduction }.step(latent(&x), latent(&v), sigma, sigma_next, Some(latent(&eps)))
        };
        let next = values(out.next.clone());
        let mean = values(out.mean.clone());
        let lp = values(out.log_prob.unwrap());
        for b in 0..2 {
            let elems: Vec<f64> = (0..4).map(|i| {
                let (y, m, s) = (next[b * 4 + i] as f64, mean[b * 4 + i] as f64, out.std);
                -(y - m).powi(2) / (2.0 * s * s) - s.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
            }).collect();
            let want = if sum { elems.iter().sum::<f64>() } else { elems.iter().sum::<f64>() / 4.0 };
            prop_assert!((lp[b] as f64 - want).abs() < 1e-3 * want.abs().max(1.0), "{} vs {}", lp[b], want);
            // the sample is mean + std * eps
            for i in 0..4 {
                let k = b * 4 + i;
                prop_assert!((next[k] as f64 - (mean[k] as f64 + out.std * eps[k] as f64)).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn ode_step_with_zero_velocity_is_identity(x in prop::collection::vec(-5.0f32..5.0, 8), sigma in 0.01f64..1.0, frac in 0.0f64..1.0) {
        let out = EulerOde.step(latent(&x), latent(&[0.0; 8]), sigma, sigma * frac, None);
        prop_assert_eq!(values(out.next), x);
        prop_assert!(out.log_prob.is_none());
    }

    #[test]
    fn cfg_with_unit_scale_is_the_conditional(c in prop::collection::vec(-5.0f32..5.0, 8), u in prop::collection::vec(-5.0f32..5.0, 8)) {
        let g = Guidance::ClassifierFree { scale: 1.0 };
        let out = values(g.combine(latent(&c), latent(&u)));
        for (a, b) in out.iter().zip(&c) { prop_assert!((a - b).abs() < 1e-5); }
    }
}

#[test]
fn flow_grpo_step_by_hand() {
    // sigma 0.5, next 0.25, a = 0.7: s = 0.7 sqrt(0.5 / 0.5) = 0.7, dt = -0.25,
    // mean = x + dt (v + s^2 / (2 sigma) (x + 0.5 v)) with x = 1, v = 2:
    //      = 1 - 0.25 (2 + 0.49 (1 + 1)) = 0.255; std = 0.7 * 0.5 = 0.35.
    let t = FlowGrpoSde::default().transition(latent(&[1.0; 8]), latent(&[2.0; 8]), 0.5, 0.25);
    assert!((values(t.mean)[0] - 0.255).abs() < 1e-6);
    assert!((t.std - 0.35).abs() < 1e-12);
}

#[test]
fn dance_grpo_step_by_hand() {
    // sigma 0.5, next 0.25, eta 0.3, x = 1, v = 2: score = -(1 + 0.5 * 2) / 0.5 = -4,
    // mean = 1 - 0.25 * 2 - 0.5 * 0.09 * (-4) * (-0.25) = 0.455; std = 0.3 * 0.5 = 0.15.
    let t = DanceGrpoSde::default().transition(latent(&[1.0; 8]), latent(&[2.0; 8]), 0.5, 0.25);
    assert!((values(t.mean)[0] - 0.455).abs() < 1e-6);
    assert!((t.std - 0.15).abs() < 1e-12);
}

#[test]
fn gaussian_log_prob_at_the_mean() {
    // at the mean: -ln(std) - 0.5 ln(2 pi), std = 1 -> -0.918939
    let lp = values(gaussian_log_prob(
        latent(&[0.5; 8]),
        latent(&[0.5; 8]),
        1.0,
        LogProbReduction::Mean,
    ));
    assert!((lp[0] + 0.918_938_5).abs() < 1e-5);
    let lp = values(gaussian_log_prob(
        latent(&[0.5; 8]),
        latent(&[0.5; 8]),
        1.0,
        LogProbReduction::Sum,
    ));
    assert!((lp[0] + 4.0 * 0.918_938_5).abs() < 1e-4);
}
