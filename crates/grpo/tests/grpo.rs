//! GRPO's invariants: zero-mean advantages, ratio 1 at the first update, zero gradient on the
//! clipped side, zero KL for identical models, and GRPO steps raising the expected reward on a
//! problem with a known optimum.

use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, Distribution, Tensor, TensorData},
};
use diffusion_core::sampling::rollout::randn;
use diffusion_core::{
    backend::DefaultBackend, FlowGrpoSde, LogProbReduction, Stepper, VelocityModel, WanConfig,
};
use grpo::*;
use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};

type B = DefaultBackend;
type AD = Autodiff<B>;

fn t1(v: Vec<f32>) -> Tensor<AD, 1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), &Default::default())
}

proptest! {
    #[test]
    fn advantages_have_zero_mean_per_group(
        rewards in prop::collection::vec(-10.0f32..10.0, 2..8)
            .prop_flat_map(|g| prop::collection::vec(prop::collection::vec(-10.0f32..10.0, g.len()), 1..6)),
        global in any::<bool>(),
    ) {
        let group = rewards[0].len();
        let flat: Vec<f32> = rewards.concat();
        let cfg = AdvantageConfig {
            std: if global { StdScope::Global } else { StdScope::Group },
            eps: 1e-4,
            clip: None,
        };
        let a = group_advantages(&flat, group, &cfg).unwrap();
        for g in a.chunks(group) {
            let mean = g.iter().map(|x| *x as f64).sum::<f64>() / group as f64;
            prop_assert!(mean.abs() < 1e-3, "{g:?}");
        }
        // the per-group scope scales each group to std s / (s + eps), s its own population std
        if !global {
            for (g, r) in a.chunks(group).zip(rewards.iter()) {
                let n = r.len() as f64;
                let m = r.iter().map(|x| *x as f64).sum::<f64>() / n;
                let s = (r.iter().map(|x| (*x as f64 - m).powi(2)).sum::<f64>() / n).sqrt();
                let var = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / n;
                prop_assert!((var.sqrt() - s / (s + 1e-4)).abs() < 1e-3, "{g:?} for {r:?}");
            }
        }
    }
}

/// log-probs that depend on a parameter: `log_prob_i = w * x_i`.
fn param_log_probs(w: f32, x: &[f32]) -> (Tensor<AD, 1>, Tensor<AD, 1>) {
    let w = t1(vec![w]).require_grad();
    let lp = t1(x.to_vec()) * w.clone();
    (w, lp)
}

#[test]
fn ratio_is_one_at_the_first_update_and_the_gradient_is_the_policy_gradient() {
    let x = [0.5, -1.0, 2.0];
    let adv = [1.0, -0.5, 0.25];
    let (w, lp) = param_log_probs(0.3, &x);
    let old = lp.clone().detach();
    let ratio: Vec<f32> = (lp.clone() - old.clone())
        .exp()
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(ratio, vec![1.0; 3]);
    let loss = clipped_surrogate(lp, old, t1(adv.to_vec()), 0.2);
    // loss = -mean(A) at ratio 1; d loss / d w = -mean(A_i x_i)
    let value: f32 = loss.clone().into_scalar();
    assert!((value + (1.0 - 0.5 + 0.25) / 3.0).abs() < 1e-6);
    let g = w
        .grad(&loss.backward())
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap()[0];
    let expected = -(0.5 * 1.0 + 0.5 + 2.0 * 0.25) / 3.0;
    assert!((g - expected).abs() < 1e-6, "{g} vs {expected}");
}

#[test]
fn clipped_side_has_zero_gradient() {
    let clip = 0.2;
    // old log-probs 0; log-probs w * x with w = 1 and x = ln(ratio)
    let grad_at = |ratio: f32, advantage: f32| -> f32 {
        let (w, lp) = param_log_probs(1.0, &[ratio.ln()]);
        let loss = clipped_surrogate(lp, t1(vec![0.0]), t1(vec![advantage]), clip);
        w.grad(&loss.backward())
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap()[0]
    };
    // positive advantage, ratio above 1 + clip: clipped, no gradient
    assert_eq!(grad_at(1.5, 1.0), 0.0);
    // negative advantage, ratio below 1 - clip: clipped, no gradient
    assert_eq!(grad_at(0.5, -1.0), 0.0);
    // the other sides stay unclipped (pessimistic bound): gradient -A * rho * x
    let g = grad_at(0.5, 1.0);
    assert!((g + 0.5 * 0.5f32.ln()).abs() < 1e-6, "{g}");
    let g = grad_at(1.5, -1.0);
    assert!((g - 1.5 * 1.5f32.ln()).abs() < 1e-5, "{g}");
    // inside the range: gradient -A * rho * x
    let g = grad_at(1.1, 2.0);
    assert!((g + 2.0 * 1.1 * 1.1f32.ln()).abs() < 1e-5, "{g}");
}

#[test]
fn kl_is_zero_for_identical_models_and_positive_otherwise() {
    let dev = Default::default();
    AD::seed(&dev, 1);
    let policy = WanConfig::tiny().init::<AD>(&dev).unwrap();
    let reference = policy.clone();
    let x = Tensor::<AD, 5>::random([2, 4, 1, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
    let text = Tensor::<AD, 3>::random([2, 3, 16], Distribution::Normal(0.0, 1.0), &dev);
    let sde = FlowGrpoSde::default();
    let (sigma, next) = (0.7, 0.6);
    let t = Tensor::<AD, 1>::full([2], sigma * 1000.0, &dev);
    let step = |m: &diffusion_core::WanTransformer<AD>| {
        let v = m.velocity(x.clone(), t.clone(), text.clone());
        sde.transition(x.clone(), v, sigma, next)
    };
    let (a, b) = (step(&policy), step(&reference));
    let kl: Vec<f32> = transition_kl(a.mean.clone(), b.mean, a.std, LogProbReduction::Mean)
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(kl, vec![0.0, 0.0]);
    let shifted = a.mean.clone().add_scalar(0.1);
    let kl: Vec<f32> = transition_kl(shifted, a.mean, a.std, LogProbReduction::Mean)
        .into_data()
        .to_vec()
        .unwrap();
    let expected = 0.01 / (2.0 * a.std * a.std);
    assert!(
        kl.iter()
            .all(|k| (*k as f64 - expected).abs() < 1e-4 * expected),
        "{kl:?}"
    );
}

/// A one-step policy with a learnable velocity `theta` (the same for every sample), one
/// Flow-GRPO SDE step from sigma 0.8 to 0.4, reward `-|| x_next - target ||^2`: the optimum is
/// `E[mean] = target`, i.e. `theta* = target / c` with `mean = x (1 + k dt) + theta c`.
#[test]
fn grpo_steps_raise_the_expected_reward() {
    let dev: burn::tensor::Device<AD> = Default::default();
    let d = 4;
    let target = [1.0f32, -1.0, 0.5, 0.0];
    let sde = FlowGrpoSde::default();
    let (sigma, next) = (0.8, 0.4);
    let target_t = || Tensor::<AD, 2>::from_data(TensorData::new(target.to_vec(), [1, d]), &dev);
    // a local generator: the backend's is shared with the tests running in parallel
    let rng = std::cell::RefCell::new(StdRng::seed_from_u64(7));
    let rollout = |theta: &Tensor<AD, 1>, n: usize| {
        let x = randn::<AD, 2>([n, d], &mut rng.borrow_mut(), &dev);
        let v = theta.clone().reshape([1, d]).repeat_dim(0, n);
        let eps = randn::<AD, 2>([n, d], &mut rng.borrow_mut(), &dev);
        let out = sde.step(x.clone(), v, sigma, next, Some(eps));
        let reward = (out.next.clone() - target_t())
            .powi_scalar(2)
            .sum_dim(1)
            .neg()
            .reshape([n]);
        (x, out, reward)
    };
    let expected_reward = |theta: &Tensor<AD, 1>| -> f32 {
        let (_, _, r) = rollout(&theta.clone().detach(), 8192);
        r.mean().into_scalar()
    };
    let mut theta = Tensor::<AD, 1>::zeros([d], &dev).require_grad();
    let before = expected_reward(&theta);
    let (group, groups, lr, clip) = (8, 4, 2.0f32, 0.2);
    for _ in 0..60 {
        let (x, out, reward) = rollout(&theta.clone().detach(), group * groups);
        let old = out.log_prob.clone().unwrap().detach();
        let rewards: Vec<f32> = reward.into_data().to_vec().unwrap();
        let adv = group_advantages(&rewards, group, &AdvantageConfig::default()).unwrap();
        let next_sample = out.next.detach();
        for _ in 0..4 {
            let v = theta.clone().reshape([1, d]).repeat_dim(0, group * groups);
            let tr = sde.transition(x.clone(), v, sigma, next);
            let lp = diffusion_core::sampling::stepper::gaussian_log_prob(
                next_sample.clone(),
                tr.mean,
                tr.std,
                LogProbReduction::Sum,
            );
            let loss = clipped_surrogate(lp, old.clone(), t1(adv.clone()), clip);
            let g = theta.grad(&loss.backward()).unwrap();
            theta = Tensor::from_inner(theta.inner() - g.mul_scalar(lr)).require_grad();
        }
    }
    let after = expected_reward(&theta);
    // the most any theta can gain is || target ||^2 = 2.25 (from theta = 0 to theta*)
    assert!(after > before + 1.0, "expected reward {before} -> {after}");
    // theta moved towards the optimum
    let k = sde.diffusion(sigma, next).powi(2) / (2.0 * sigma);
    let c = ((1.0 + k * (1.0 - sigma)) * (next - sigma)) as f32;
    let theta: Vec<f32> = theta.into_data().to_vec().unwrap();
    let dist = |th: &[f32]| {
        th.iter()
            .zip(target)
            .map(|(a, t)| (a - t / c).powi(2))
            .sum::<f32>()
            .sqrt()
    };
    let start = dist(&[0.0; 4]);
    assert!(
        dist(&theta) < 0.7 * start,
        "{theta:?}: {} of {start}",
        dist(&theta)
    );
}
