//! Training a latent reward on the oracle's values *and* its gradients in the latent.
//!
//! PRFL ("Video Generation Models Are Good Latent Reward Models") climbs the reward model's gradient in the latent, so what matters is that the
//! gradient points where the true reward rises. Preference pairs only constrain differences of
//! scores between far-apart samples: a model can rank them well with a gradient orthogonal to
//! the oracle's (docs/results/prm_refinement.md measured a cosine of 0.01). Where the oracle is
//! differentiable in the latent (through the VAE decoder), its gradient can be a training target
//! too: Sobolev training (Czarnecki et al., 2017, "Sobolev Training for Neural Networks").
//! Matching `grad r` to `g` directly would need a second backward pass through the model's
//! gradient, which burn 0.21 does not have; a random direction `u ~ N(0, I)` gives an unbiased
//! estimate instead, `E[(grad r . u - g . u)^2] = |grad r - g|^2`, and `grad r . u` is a central
//! difference of two ordinary forward passes, `(r(x + h u) - r(x - h u)) / 2h`.

use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor};
use diffusion_core::{sampling::rollout::randn, train::loss::TimestepSampling};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::{
    base::{shape_error, LatentReward},
    data::{index, RegressionSet},
    error::{host_f32, invalid, Result, RewardError},
    train::{fit, noisy, sample_sigmas, FitConfig, FitReport},
};

/// Samples with the oracle's value and its gradient in the clean latent.
///
/// # Shapes
/// - `values`: latents `[N, C, F, H, W]`, text `[N, S, D]`, targets `N`
/// - `grads`: `[N, C, F, H, W]`, `d oracle(decode(z_i)) / d z_i`
#[derive(Debug, Clone)]
pub struct GradientSet<B: Backend> {
    /// The latents, prompts and oracle values.
    pub values: RegressionSet<B>,
    /// The oracle's gradients in the latents.
    pub grads: Tensor<B, 5>,
}

/// A batch drawn from a [`GradientSet`] (shapes as there, with `B` rows).
#[derive(Debug, Clone)]
pub struct GradientBatch<B: Backend> {
    /// Clean latents `[B, C, F, H, W]`.
    pub latents: Tensor<B, 5>,
    /// Prompt embeddings `[B, S, D]`.
    pub text: Tensor<B, 3>,
    /// Oracle values `[B]`.
    pub targets: Tensor<B, 1>,
    /// Oracle gradients `[B, C, F, H, W]`.
    pub grads: Tensor<B, 5>,
}

impl<B: Backend> GradientSet<B> {
    /// Checks that the gradients have the latents' shape.
    ///
    /// # Errors
    /// `Shape` when they differ.
    pub fn new(values: RegressionSet<B>, grads: Tensor<B, 5>) -> Result<Self> {
        let (want, got) = (values.latents.dims(), grads.dims());
        if want != got {
            return Err(shape_error(
                "grads [N, C, F, H, W]",
                want.to_vec(),
                got.to_vec(),
            ));
        }
        Ok(Self { values, grads })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the set is empty (never, for a set built from a [`RegressionSet`]).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The samples at `idx` (repeats allowed).
    pub fn batch(&self, idx: &[usize]) -> GradientBatch<B> {
        let v = self.values.batch(idx);
        let i = index::<B>(idx, &v.latents.device());
        GradientBatch {
            latents: v.latents,
            text: v.text,
            targets: v.targets,
            grads: self.grads.clone().select(0, i),
        }
    }
}

/// The directions along which [`fit_gradient_match`] compares slopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeDirections {
    /// One `u ~ N(0, I)` per sample: an unbiased estimate of `|grad r - g|^2 / |g|^2`, with a
    /// variance that grows with the latent's size.
    Random,
    /// The oracle's gradient `g` and the model's own gradient `grad r` (computed by an extra
    /// backward pass and held fixed): the slope along `g` must be `|g|`, the slope along
    /// `grad r` must be `g . grad r / |grad r|`. The only fixed point is `grad r = g`, and a model
    /// whose gradient is orthogonal to the oracle's is told directly to shrink it.
    OracleAndModel,
}

/// Settings of [`gradient_match_loss`] and [`fit_gradient_match`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradientMatchConfig {
    /// Weight of the gradient term against the value term.
    pub weight: f64,
    /// Half-step `h` of the central difference, in latent units (RMS of the step).
    pub step: f64,
    /// Which directions are probed.
    pub directions: ProbeDirections,
}

impl Default for GradientMatchConfig {
    fn default() -> Self {
        Self {
            weight: 1.0,
            step: 0.02,
            directions: ProbeDirections::OracleAndModel,
        }
    }
}

impl GradientMatchConfig {
    fn validate(&self) -> Result<()> {
        if !(self.weight >= 0.0 && self.weight.is_finite()) {
            return Err(invalid("weight", format!("{} is not >= 0", self.weight)));
        }
        if !(self.step > 0.0 && self.step.is_finite()) {
            return Err(invalid("step", format!("{} is not > 0", self.step)));
        }
        Ok(())
    }
}

/// Per-sample sum over all but the first dimension: `[B, ...] -> [B]`.
fn per_sample<B: Backend>(t: Tensor<B, 5>) -> Tensor<B, 1> {
    let b = t.dims()[0];
    t.reshape([b as i32, -1]).sum_dim(1).reshape([b])
}

/// The value-and-gradient loss of `model` at the noisy latents `x = (1 - sigma) z + sigma eps`
/// of `batch`'s clean latents `z`, probed along each of `dirs` (each scaled per sample to unit
/// RMS, `u`, with unit vector `û`): with `r± = model(x ± h u, sigma)`,
///
/// `(mean of all r± - o)^2 + weight * mean over dirs of ((1 - sigma) (r+ - r-) / 2h|u| - g . û)^2 / mean |g|^2`
///
/// averaged over the batch (`mean |g|^2` is the batch's: a sample's own would blow up where the
/// oracle is flat). The target of `x`'s gradient is the oracle's gradient in the clean
/// latent of the same noise, `z = (x - sigma eps) / (1 - sigma)`, which is `g / (1 - sigma)`;
/// the gradient term is written with `(1 - sigma)` multiplied through so that it stays finite
/// as `sigma -> 1`, and divided by the gradients' mean square so that it is a relative error
/// (along `û = g / |g|`, 1 for a model with no slope there and a batch of equal `|g|`).
///
/// # Shapes
/// - `x`: `[B, C, F, H, W]`, `sigma`: `[B]`, each of `dirs`: as `x` -> `[1]`
pub fn gradient_match_loss<B: Backend, M: LatentReward<B>>(
    model: &M,
    x: Tensor<B, 5>,
    sigma: Tensor<B, 1>,
    batch: &GradientBatch<B>,
    dirs: &[Tensor<B, 5>],
    cfg: &GradientMatchConfig,
) -> Tensor<B, 1> {
    let [b, c, f, hh, w] = x.dims();
    let d = (c * f * hh * w) as f64;
    let h = cfg.step;
    // unit-RMS directions (a zero direction stays zero)
    let units: Vec<Tensor<B, 5>> = dirs
        .iter()
        .map(|u| {
            let rms = per_sample(u.clone().powi_scalar(2))
                .div_scalar(d)
                .sqrt()
                .add_scalar(1e-12)
                .reshape([b, 1, 1, 1, 1]);
            u.clone() / rms
        })
        .collect();
    let probes: Vec<Tensor<B, 5>> = units
        .iter()
        .flat_map(|u| {
            [
                x.clone() + u.clone().mul_scalar(h),
                x.clone() - u.clone().mul_scalar(h),
            ]
        })
        .collect();
    let k = probes.len();
    let scores = model.score(
        Tensor::cat(probes, 0),
        Tensor::cat(vec![sigma.clone(); k], 0),
        Tensor::cat(vec![batch.text.clone(); k], 0),
    );
    let value = scores.clone().reshape([k, b]).mean_dim(0).reshape([b]);
    let value_loss = (value - batch.targets.clone()).powi_scalar(2).mean();
    // the batch's mean |g|^2: a per-sample one would blow up where the oracle is flat
    let g_norm2 = per_sample(batch.grads.clone().powi_scalar(2))
        .mean()
        .add_scalar(1e-12);
    let keep = sigma.neg().add_scalar(1.0);
    let slope_errors: Vec<Tensor<B, 1>> = units
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            let plus = scores.clone().narrow(0, 2 * i * b, b);
            let minus = scores.clone().narrow(0, (2 * i + 1) * b, b);
            // unit vector û = u / sqrt(d): slope along û and the oracle's
            let slope = (plus - minus).div_scalar(2.0 * h * d.sqrt()) * keep.clone();
            let target = per_sample(batch.grads.clone() * u).div_scalar(d.sqrt());
            (slope - target).powi_scalar(2).mean() / g_norm2.clone()
        })
        .collect();
    let grad_loss = Tensor::cat(slope_errors, 0).mean();
    value_loss + grad_loss.mul_scalar(cfg.weight)
}

/// Trains a reward model with [`gradient_match_loss`] on `data` at noise levels `sigma ~ noise`
/// (`None`: clean latents), with fresh noise (and random directions) per sample and step, along
/// `cfg.directions`. Shows a progress bar labelled `label`.
///
/// # Errors
/// `InvalidConfig` for a bad [`FitConfig`] or [`GradientMatchConfig`]; `NonFinite` when a loss
/// or gradient norm is NaN or infinite.
pub fn fit_gradient_match<B, M>(
    model: M,
    data: &GradientSet<B>,
    noise: Option<TimestepSampling>,
    cfg: &GradientMatchConfig,
    fit_cfg: &FitConfig,
    label: &str,
) -> Result<(M, FitReport)>
where
    B: AutodiffBackend,
    M: burn::module::AutodiffModule<B> + LatentReward<B>,
{
    cfg.validate()?;
    let device = data.grads.device();
    fit(model, data.len(), fit_cfg, label, |model, idx, rng| {
        let batch = data.batch(idx);
        let sigma = sample_sigmas::<B>(noise, idx.len(), rng, &device);
        let dims = batch.latents.dims();
        let x = noisy(
            batch.latents.clone(),
            randn(dims, rng, &device),
            sigma.clone(),
        );
        let dirs = match cfg.directions {
            ProbeDirections::Random => vec![randn(dims, rng, &device)],
            ProbeDirections::OracleAndModel => {
                let leaf = x.clone().detach().require_grad();
                let score = model.score(leaf.clone(), sigma.clone(), batch.text.clone());
                // no gradient (a model constant in its input) probes nothing along it
                let own = leaf
                    .grad(&score.sum().backward())
                    .map(Tensor::from_inner)
                    .unwrap_or_else(|| Tensor::zeros(dims, &device));
                vec![batch.grads.clone(), own]
            }
        };
        gradient_match_loss(model, x, sigma, &batch, &dirs, cfg)
    })
}

/// Mean cosine between `reward`'s gradient in the latent and the oracle's, over `set`'s samples
/// noised to `sigma` (`x = (1 - sigma) z + sigma eps`, `eps` drawn from `seed`): whether climbing
/// the reward model's gradient, as PRFL and ReFL do, climbs the oracle where the data lies. 1:
/// the same direction; about 0: orthogonal (docs/results/prm_refinement.md measured 0.01 for the process
/// reward model on shapes-world). A sample where either gradient is zero counts 0. Scores
/// `batch` samples per pass (the argument order of `evaluate_pairs`).
///
/// # Errors
/// `Shape` when the set does not fit the model; `InvalidConfig` for `batch` 0 or `sigma` outside
/// `[0, 1)`; `NonFinite` (its `step` is the sample's index) when a cosine is NaN.
pub fn gradient_cosine<B: AutodiffBackend, M: LatentReward<B>>(
    reward: &M,
    set: &GradientSet<B>,
    sigma: f64,
    seed: u64,
    batch: usize,
) -> Result<f64> {
    if batch == 0 {
        return Err(invalid("batch", "0: no samples per pass".to_string()));
    }
    if !(0.0..1.0).contains(&sigma) {
        return Err(invalid("sigma", format!("{sigma} is not in [0, 1)")));
    }
    let device = set.grads.device();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut cosines = Vec::with_capacity(set.len());
    for chunk in idx.chunks(batch) {
        let b = set.batch(chunk);
        reward.check_input(b.latents.dims(), b.text.dims())?;
        let n = chunk.len();
        let sig = Tensor::<B, 1>::full([n], sigma as f32, &device);
        let eps = randn(b.latents.dims(), &mut rng, &device);
        let x = noisy(b.latents, eps, sig.clone()).detach().require_grad();
        let score = reward.score(x.clone(), sig, b.text);
        let zeros = || Tensor::zeros(x.dims(), &device);
        let g_model: Tensor<B, 5> = x
            .grad(&score.sum().backward())
            .map_or_else(zeros, Tensor::from_inner);
        let g_oracle = b.grads.detach();
        let norm = |g: Tensor<B, 5>| per_sample(g.powi_scalar(2)).sqrt();
        let cos = per_sample(g_model.clone() * g_oracle.clone())
            / (norm(g_model) * norm(g_oracle)).add_scalar(1e-20);
        cosines.extend(host_f32(cos)?);
    }
    if let Some(i) = cosines.iter().position(|c| !c.is_finite()) {
        // `step`: the sample's index in the set
        return Err(RewardError::NonFinite {
            what: "gradient cosine",
            step: i,
        });
    }
    Ok(cosines.iter().map(|c| *c as f64).sum::<f64>() / cosines.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::Autodiff,
        module::{Module, Param},
        tensor::TensorData,
    };
    use diffusion_core::backend::DefaultBackend;

    use super::*;
    use crate::base::RewardRange;

    type AD = Autodiff<DefaultBackend>;

    /// `r(x) = sum(w * x)`: its gradient is `w` everywhere.
    #[derive(Module, Debug)]
    struct Linear<B: Backend> {
        w: Param<Tensor<B, 4>>,
    }

    impl<B: Backend> LatentReward<B> for Linear<B> {
        fn score(&self, x: Tensor<B, 5>, _: Tensor<B, 1>, _: Tensor<B, 3>) -> Tensor<B, 1> {
            let b = x.dims()[0];
            (x * self.w.val().unsqueeze::<5>())
                .reshape([b as i32, -1])
                .sum_dim(1)
                .reshape([b])
        }
        fn range(&self) -> RewardRange {
            RewardRange::Real
        }
        fn check_input(&self, _: [usize; 5], _: [usize; 3]) -> Result<()> {
            Ok(())
        }
    }

    fn t5<B: Backend>(v: Vec<f32>) -> Tensor<B, 5> {
        Tensor::from_data(TensorData::new(v, [1, 1, 1, 1, 2]), &Default::default())
    }

    fn linear<B: Backend>(w: [f32; 2]) -> Linear<B> {
        Linear {
            w: Param::from_tensor(Tensor::from_data(
                TensorData::new(w.to_vec(), [1, 1, 1, 2]),
                &Default::default(),
            )),
        }
    }

    /// One sample `z = (1, 0)` with oracle value 0.5 and gradient `g = (1, 0)`.
    fn set<B: Backend>() -> GradientSet<B> {
        let dev = Default::default();
        let values = RegressionSet::new(
            t5(vec![1.0, 0.0]),
            Tensor::zeros([1, 1, 1], &dev),
            vec![0.5],
        )
        .unwrap();
        GradientSet::new(values, t5(vec![1.0, 0.0])).unwrap()
    }

    #[test]
    fn loss_by_hand() {
        type B = DefaultBackend;
        let data = set::<B>();
        let batch = data.batch(&[0]);
        let cfg = GradientMatchConfig {
            weight: 2.0,
            step: 0.1,
            directions: ProbeDirections::Random,
        };
        let loss = |w: [f32; 2], x: [f32; 2], sigma: f32, dirs: &[[f32; 2]]| {
            let dirs: Vec<Tensor<B, 5>> = dirs.iter().map(|u| t5(u.to_vec())).collect();
            gradient_match_loss(
                &linear::<B>(w),
                t5(x.to_vec()),
                Tensor::from_data([sigma], &Default::default()),
                &batch,
                &dirs,
                &cfg,
            )
            .into_scalar()
        };
        // w = (0.5, 0) at x = z: value 0.5, no value error; along g = (1, 0) its slope is 0.5
        // against the oracle's 1: (0.5 - 1)^2 / |g|^2 = 0.25, times weight 2
        assert!((loss([0.5, 0.0], [1.0, 0.0], 0.0, &[[2.0, 0.0]]) - 0.5).abs() < 1e-4);
        // w = g / (1 - sigma) matches the gradient at any noise and along any direction: only
        // the value error remains (x = (2, -0.5), value 4, (4 - 0.5)^2)
        assert!((loss([2.0, 0.0], [2.0, -0.5], 0.5, &[[0.3, -1.7]]) - 12.25).abs() < 1e-3);
        // a zero direction probes no slope; the value error is none here
        assert!(loss([0.5, 7.0], [1.0, 0.0], 0.0, &[[0.0, 0.0]]).abs() < 1e-5);
        // a gradient orthogonal to the oracle's, probed along g and along itself: slope 0
        // against 1, then slope 1 against 0, mean 1, times 2; value 0 against 0.5: 0.25
        let orthogonal = loss([0.0, 1.0], [1.0, 0.0], 0.0, &[[1.0, 0.0], [0.0, 1.0]]);
        assert!((orthogonal - 2.25).abs() < 1e-3, "{orthogonal}");
        assert!(GradientMatchConfig { step: 0.0, ..cfg }.validate().is_err());
        let wrong = Tensor::<B, 5>::zeros([1, 1, 1, 1, 3], &Default::default());
        assert!(GradientSet::new(data.values.clone(), wrong).is_err());
    }

    #[test]
    fn gradient_cosine_by_hand() {
        // g = (1, 0); a linear model's gradient is its weight at any noise level
        let data = set::<AD>();
        let cos = |w: [f32; 2], sigma| gradient_cosine(&linear::<AD>(w), &data, sigma, 0, 4);
        assert!((cos([2.0, 0.0], 0.0).unwrap() - 1.0).abs() < 1e-5);
        assert!(cos([0.0, 3.0], 0.5).unwrap().abs() < 1e-5);
        let diagonal = cos([-1.0, 1.0], 0.3).unwrap();
        assert!((diagonal + 0.5f64.sqrt()).abs() < 1e-5, "{diagonal}");
        // a model with no gradient counts 0
        assert!(cos([0.0, 0.0], 0.0).unwrap().abs() < 1e-6);
        assert!(cos([1.0, 0.0], 1.0).is_err());
        assert!(gradient_cosine(&linear::<AD>([1.0, 0.0]), &data, 0.0, 0, 0).is_err());
        let nan = gradient_cosine(&linear::<AD>([f32::NAN, 0.0]), &data, 0.0, 0, 4);
        assert!(matches!(nan, Err(RewardError::NonFinite { step: 0, .. })));
    }

    /// Training on the value and gradient of `o(z) = z . g` from a zero model recovers `g`.
    #[test]
    fn fitting_recovers_the_oracle_gradient() {
        let g = [0.6f32, -0.8];
        let dev = Default::default();
        let zs: Vec<f32> = (0..32).map(|i| ((i as f32) * 0.7).sin()).collect();
        let targets: Vec<f32> = zs.chunks(2).map(|z| z[0] * g[0] + z[1] * g[1]).collect();
        let values = RegressionSet::new(
            Tensor::<AD, 5>::from_data(TensorData::new(zs, [16, 1, 1, 1, 2]), &dev),
            Tensor::zeros([16, 1, 1], &dev),
            targets,
        )
        .unwrap();
        let grads = Tensor::from_data(TensorData::new(g.repeat(16), [16, 1, 1, 1, 2]), &dev);
        let data = GradientSet::new(values, grads).unwrap();
        let fit_cfg = FitConfig {
            optim: crate::OptimConfig::constant(3e-2, 0.0, None),
            steps: 300,
            batch: 8,
            seed: 1,
        };
        for directions in [ProbeDirections::OracleAndModel, ProbeDirections::Random] {
            let cfg = GradientMatchConfig {
                directions,
                ..GradientMatchConfig::default()
            };
            let (model, report) = fit_gradient_match(
                linear::<AD>([0.0, 0.0]),
                &data,
                None,
                &cfg,
                &fit_cfg,
                "test",
            )
            .unwrap();
            let w = model.w.val().into_data().to_vec::<f32>().unwrap();
            let close = (w[0] - g[0]).abs() < 0.05 && (w[1] - g[1]).abs() < 0.05;
            assert!(close, "{directions:?}: {w:?}");
            assert!(
                report.losses[299] < 0.1 * report.losses[0],
                "{directions:?}"
            );
        }
    }
}
