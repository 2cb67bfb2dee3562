use burn::tensor::{backend::Backend, Tensor};

/// How a per-element Gaussian log-density is reduced to one number per sample.
///
/// Flow-GRPO averages over latent elements (`Mean`), which keeps log-prob ratios near 1 and
/// makes the PPO clip range independent of the latent size; a true log-likelihood is the `Sum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum LogProbReduction {
    /// Mean over all non-batch elements (Flow-GRPO's released code).
    #[default]
    Mean,
    /// Sum over all non-batch elements (the exact log-density).
    Sum,
}

impl LogProbReduction {
    /// Reduces per-element terms to one number per sample.
    ///
    /// # Shapes
    /// - `per_elem`: `[B, ...]` -> `[B]`
    pub fn reduce<B: Backend, const D: usize>(self, per_elem: Tensor<B, D>) -> Tensor<B, 1> {
        let batch = per_elem.dims()[0];
        let flat: Tensor<B, 2> = per_elem.reshape([batch as i32, -1]);
        match self {
            Self::Mean => flat.mean_dim(1),
            Self::Sum => flat.sum_dim(1),
        }
        .reshape([batch])
    }
}

/// The Gaussian transition `p(x_next | x) = N(mean, std^2 I)` of one step.
///
/// # Shapes
/// - `mean`: same as the latent, e.g. `[B, C, F, H, W]`
#[derive(Debug, Clone)]
pub struct Transition<B: Backend, const D: usize> {
    /// Mean of the next latent.
    pub mean: Tensor<B, D>,
    /// Standard deviation of every element of the next latent (0 for an ODE step).
    pub std: f64,
}

/// Result of one step.
///
/// # Shapes
/// - `next`, `mean`: like the latent, `[B, ...]`
/// - `log_prob`: `[B]`
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend, const D: usize> {
    /// The next latent, `mean + std * eps`.
    pub next: Tensor<B, D>,
    /// Mean of the transition.
    pub mean: Tensor<B, D>,
    /// Standard deviation of the transition (0 for deterministic steps).
    pub std: f64,
    /// `log p(next | x)` per sample; `None` for deterministic steps, whose density is degenerate.
    pub log_prob: Option<Tensor<B, 1>>,
}

/// One reverse-process transition in flow-matching convention (`dt = sigma_next - sigma < 0`).
///
/// Implementors only define the Gaussian transition; [`Stepper::step`] draws from it and scores
/// the draw.
pub trait Stepper {
    /// Mean and standard deviation of `x(sigma_next)` given `x(sigma)` and the velocity `v`.
    fn transition<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        v: Tensor<B, D>,
        sigma: f64,
        sigma_next: f64,
    ) -> Transition<B, D>;

    /// Whether the step injects noise (SDE) or not (ODE).
    fn is_stochastic(&self) -> bool;

    /// Reduction used for [`StepOutput::log_prob`].
    fn reduction(&self) -> LogProbReduction {
        LogProbReduction::Mean
    }

    /// Takes the step with standard-normal noise `eps` (shape of `x`).
    ///
    /// With `eps = None` the step returns the mean. The log-prob is of the returned sample, with
    /// the sample detached, as in Flow-GRPO (gradients flow through the mean only).
    fn step<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        v: Tensor<B, D>,
        sigma: f64,
        sigma_next: f64,
        eps: Option<Tensor<B, D>>,
    ) -> StepOutput<B, D> {
        let Transition { mean, std } = self.transition(x, v, sigma, sigma_next);
        let next = match eps {
            Some(eps) if std > 0.0 => mean.clone() + eps.mul_scalar(std),
            _ => mean.clone(),
        };
        let log_prob = (std > 0.0)
            .then(|| gaussian_log_prob(next.clone().detach(), mean.clone(), std, self.reduction()));
        StepOutput {
            next,
            mean,
            std,
            log_prob,
        }
    }
}

/// Per-sample log-density of `sample` under `N(mean, std^2 I)`, reduced over all non-batch
/// elements.
///
/// `log N = -(x - m)^2 / (2 std^2) - ln std - 0.5 ln(2 pi)` per element.
///
/// # Shapes
/// - `sample`, `mean`: `[B, ...]`
/// - output: `[B]`
pub fn gaussian_log_prob<B: Backend, const D: usize>(
    sample: Tensor<B, D>,
    mean: Tensor<B, D>,
    std: f64,
    reduction: LogProbReduction,
) -> Tensor<B, 1> {
    let per_elem = (sample - mean)
        .powi_scalar(2)
        .div_scalar(-2.0 * std * std)
        .sub_scalar(std.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln());
    reduction.reduce(per_elem)
}
