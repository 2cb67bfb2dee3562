//! Optimiser helpers: PyTorch-equivalent AdamW settings and global gradient-norm clipping.

use burn::{
    module::{AutodiffModule, ModuleVisitor, Param},
    optim::{AdamWConfig, GradientsParams},
    tensor::{backend::AutodiffBackend, ElementConversion, Tensor},
};

/// PyTorch's AdamW betas.
pub(crate) const ADAMW_BETAS: (f32, f32) = (0.9, 0.999);
/// PyTorch's AdamW epsilon.
pub(crate) const ADAMW_EPSILON: f32 = 1e-8;

/// AdamW with PyTorch's defaults made explicit (`betas (0.9, 0.999)`, `eps 1e-8`) and the given
/// weight decay; burn's own defaults are `eps 1e-5`, `weight_decay 1e-4`.
pub fn adamw(weight_decay: f64) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(ADAMW_BETAS.0)
        .with_beta_2(ADAMW_BETAS.1)
        .with_epsilon(ADAMW_EPSILON)
        .with_weight_decay(weight_decay as f32)
}

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of `module`'s gradients, and the gradients scaled by
/// `max_norm / (norm + 1e-6)` when the norm exceeds `max_norm`, as PyTorch's
/// `clip_grad_norm_` (burn's built-in clipping is per tensor).
///
/// Returns `(gradients, norm before clipping)`; a non-finite norm is returned as is, with the
/// gradients untouched, for the caller's NaN guard.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, f64) {
    let mut visitor = SquaredNorm::<B> {
        grads: &grads,
        total: None,
    };
    module.visit(&mut visitor);
    let norm = visitor
        .total
        .map(|t| t.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0);
    if norm.is_finite() && norm > max_norm {
        module.visit(&mut Scale {
            grads: &mut grads,
            factor: max_norm / (norm + 1e-6),
        });
    }
    (grads, norm)
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::Autodiff,
        nn::{Linear, LinearConfig},
        tensor::TensorData,
    };

    use super::*;
    use crate::backend::DefaultBackend;

    type AD = Autodiff<DefaultBackend>;

    #[test]
    fn clips_to_the_global_norm() {
        let dev = Default::default();
        let lin: Linear<AD> = LinearConfig::new(2, 1).init(&dev);
        // loss = sum(W x + b) with x = (3, 4): dW = (3, 4), db = 1, norm sqrt(26)
        let x = Tensor::<AD, 2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &dev);
        let grads = GradientsParams::from_grads(lin.forward(x).sum().backward(), &lin);
        let (clipped, norm) = clip_grad_norm(&lin, grads, 1.0);
        assert!((norm - 26f64.sqrt()).abs() < 1e-5, "{norm}");
        let w: Tensor<DefaultBackend, 2> = clipped.get(lin.weight.id).unwrap();
        let w: Vec<f32> = w.into_data().to_vec().unwrap();
        let s = 26f32.sqrt();
        assert!(
            (w[0] - 3.0 / s).abs() < 1e-4 && (w[1] - 4.0 / s).abs() < 1e-4,
            "{w:?}"
        );
        // under the limit: untouched
        let x = Tensor::<AD, 2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &dev);
        let grads = GradientsParams::from_grads(lin.forward(x).sum().backward(), &lin);
        let (kept, _) = clip_grad_norm(&lin, grads, 10.0);
        let w: Tensor<DefaultBackend, 2> = kept.get(lin.weight.id).unwrap();
        assert_eq!(w.into_data().to_vec::<f32>().unwrap(), vec![3.0, 4.0]);
    }
}
