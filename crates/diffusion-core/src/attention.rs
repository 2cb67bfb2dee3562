//! Scaled dot-product attention with its own backward under autodiff.
//!
//! burn 0.21's autodiff backend evaluates `attention` with its generic fallback: the score
//! matrix, its row maximum, exponential, row sum and the probabilities are separate tracked
//! operations, several `[B, H, L, S]` tensors of them are kept for the backward, and the softmax
//! is differentiated operation by operation. [`autodiff_attention`] records one autodiff node
//! instead. It keeps the inputs, the output and the row log-sum-exp `[B, H, L, 1]`, and its
//! backward recomputes the probabilities (the backward of FlashAttention, Dao et al. 2022,
//! section 3.1, done here with whole-matrix tensor operations of the inner backend):
//!
//! ```text
//! P = exp(s Q Kᵀ - lse)    dV = Pᵀ dO    dP = dO Vᵀ    D = rowsum(dO ∘ O)
//! dS = s P ∘ (dP - D)      dQ = dS K     dK = dSᵀ Q
//! ```
//!
//! burn lets a crate add an autodiff operation only for a concrete `Autodiff<I>`; naming it
//! from generic model code would need a backend-extension bound on every model type. [`attention`]
//! therefore checks at run time (by `TypeId`) whether its backend is `Autodiff<I>` for one of the
//! inner backends built in (flex; wgpu, cuda and ndarray with their features) and takes the fused
//! node there. Any other backend, and every backend without autodiff, takes burn's `attention`
//! (on flex a fused forward kernel).

use core::any::{Any, TypeId};

use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, module, ops::AttentionModuleOptions, Tensor, TensorPrimitive},
};
use burn_autodiff::{
    checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};

/// Scaled dot-product attention `softmax(Q Kᵀ / sqrt(Dh)) V` without mask or bias, with the
/// fused backward of [`autodiff_attention`] where the backend is one of the built-in backends
/// under autodiff, and burn's `attention` elsewhere (module docs).
///
/// # Shapes
/// - `q`: `[B, H, L, Dh]`, `k`, `v`: `[B, H, S, Dh]` -> `[B, H, L, Dh]`
pub fn attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    macro_rules! fused_on {
        ($inner:ty) => {
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner>>() {
                return cast(autodiff_attention::<$inner>(cast(q), cast(k), cast(v)));
            }
        };
    }
    fused_on!(crate::backend::Flex);
    #[cfg(feature = "wgpu")]
    fused_on!(crate::backend::Wgpu);
    #[cfg(feature = "cuda")]
    fused_on!(crate::backend::Cuda);
    #[cfg(feature = "ndarray")]
    fused_on!(crate::backend::NdArray);
    module::attention(q, k, v, None, None, AttentionModuleOptions::default())
}

/// Moves a value into the type it is known to have (`TypeId` checked by the caller).
fn cast<A: 'static, T: 'static>(a: A) -> T {
    *(Box::new(a) as Box<dyn Any>)
        .downcast::<T>()
        .expect("the caller compared the TypeIds")
}

/// Scaled dot-product attention as one autodiff node whose backward recomputes the
/// probabilities from the saved log-sum-exp (module docs). Equal to burn's `attention` in value
/// and gradient (tested against it).
///
/// # Shapes
/// - `q`: `[B, H, L, Dh]`, `k`, `v`: `[B, H, S, Dh]` -> `[B, H, L, Dh]`
pub fn autodiff_attention<I: Backend>(
    q: Tensor<Autodiff<I>, 4>,
    k: Tensor<Autodiff<I>, 4>,
    v: Tensor<Autodiff<I>, 4>,
) -> Tensor<Autodiff<I>, 4> {
    let [q, k, v] = [q, k, v].map(|t| t.into_primitive().tensor());
    let inner = |p: &I::FloatTensorPrimitive| Tensor::<I, 4>::from_primitive(float(p.clone()));
    let (qi, ki, vi) = (
        inner(&q.primitive),
        inner(&k.primitive),
        inner(&v.primitive),
    );
    let scale = (qi.dims()[3] as f64).powf(-0.5);
    let prep = AttentionBackward
        .prepare::<NoCheckpointing>([q.node, k.node, v.node])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let (out, lse) = forward(qi.clone(), ki.clone(), vi.clone(), scale);
            let saved = Saved {
                q: qi,
                k: ki,
                v: vi,
                out: out.clone(),
                lse,
                scale,
            };
            prep.finish(saved, out.into_primitive().tensor())
        }
        OpsKind::UnTracked(prep) => prep.finish(
            module::attention(qi, ki, vi, None, None, AttentionModuleOptions::default())
                .into_primitive()
                .tensor(),
        ),
    };
    Tensor::from_primitive(float(out))
}

fn float<B: Backend>(p: B::FloatTensorPrimitive) -> TensorPrimitive<B> {
    TensorPrimitive::Float(p)
}

/// The output and the row log-sum-exp of the scaled scores.
///
/// # Shapes
/// - `q`: `[B, H, L, Dh]`, `k`, `v`: `[B, H, S, Dh]` -> (`[B, H, L, Dh]`, `[B, H, L, 1]`)
fn forward<I: Backend>(
    q: Tensor<I, 4>,
    k: Tensor<I, 4>,
    v: Tensor<I, 4>,
    scale: f64,
) -> (Tensor<I, 4>, Tensor<I, 4>) {
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    let max = scores.clone().max_dim(3);
    let exp = (scores - max.clone()).exp();
    let sum = exp.clone().sum_dim(3);
    let out = exp.matmul(v) / sum.clone();
    (out, max + sum.log())
}

/// What the backward of [`autodiff_attention`] keeps: inputs, output, row log-sum-exp.
#[derive(Clone, Debug)]
struct Saved<I: Backend> {
    q: Tensor<I, 4>,
    k: Tensor<I, 4>,
    v: Tensor<I, 4>,
    out: Tensor<I, 4>,
    lse: Tensor<I, 4>,
    scale: f64,
}

#[derive(Debug)]
struct AttentionBackward;

impl<I: Backend> Backward<I, 3> for AttentionBackward {
    type State = Saved<I>;

    fn backward(self, ops: Ops<Saved<I>, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = Tensor::<I, 4>::from_primitive(float(grads.consume::<I>(&ops.node)));
        let Saved {
            q,
            k,
            v,
            out,
            lse,
            scale,
        } = ops.state;
        let [node_q, node_k, node_v] = ops.parents;
        let probs = (q
            .clone()
            .matmul(k.clone().swap_dims(2, 3))
            .mul_scalar(scale)
            - lse)
            .exp();
        if let Some(node) = node_v {
            let grad = probs.clone().swap_dims(2, 3).matmul(d_out.clone());
            grads.register::<I>(node.id, grad.into_primitive().tensor());
        }
        if node_q.is_none() && node_k.is_none() {
            return;
        }
        let row = (d_out.clone() * out).sum_dim(3);
        let d_scores = probs * (d_out.matmul(v.swap_dims(2, 3)) - row) * scale;
        if let Some(node) = node_q {
            let grad = d_scores.clone().matmul(k);
            grads.register::<I>(node.id, grad.into_primitive().tensor());
        }
        if let Some(node) = node_k {
            let grad = d_scores.swap_dims(2, 3).matmul(q);
            grads.register::<I>(node.id, grad.into_primitive().tensor());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DefaultBackend;
    use burn::tensor::{TensorData, Tolerance};
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use rand_distr::StandardNormal;

    type I = DefaultBackend;
    type AD = Autodiff<I>;

    fn normal(shape: [usize; 4], rng: &mut StdRng) -> Tensor<AD, 4> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default()).require_grad()
    }

    /// Output and the gradients of `sum(out * w)` with respect to q, k and v.
    fn run(
        f: fn(Tensor<AD, 4>, Tensor<AD, 4>, Tensor<AD, 4>) -> Tensor<AD, 4>,
        qkv: &[Tensor<AD, 4>; 3],
        w: &Tensor<AD, 4>,
    ) -> [Tensor<I, 4>; 4] {
        let [q, k, v] = qkv.clone().map(|t| t.detach().require_grad());
        let out = f(q.clone(), k.clone(), v.clone());
        let grads = (out.clone() * w.clone()).sum().backward();
        let grad = |t: &Tensor<AD, 4>| t.grad(&grads).expect("tracked input");
        [out.inner(), grad(&q), grad(&k), grad(&v)]
    }

    #[test]
    fn equals_burns_attention_in_value_and_gradient() {
        let mut rng = StdRng::seed_from_u64(7);
        let qkv = [[2, 3, 5, 4], [2, 3, 7, 4], [2, 3, 7, 4]].map(|s| normal(s, &mut rng));
        let w = normal([2, 3, 5, 4], &mut rng);
        let burns = |q, k, v| module::attention(q, k, v, None, None, Default::default());
        let expected = run(burns, &qkv, &w);
        for f in [autodiff_attention::<I>, attention::<AD>] {
            for (got, want) in run(f, &qkv, &w).into_iter().zip(&expected) {
                got.into_data()
                    .assert_approx_eq::<f32>(&want.to_data(), Tolerance::absolute(2e-5));
            }
        }
    }

    /// Equal keys give every query the same scores: uniform weights, so the output is the mean
    /// of the values, the gradient of each value is the mean of the output gradients, and the
    /// queries get no gradient (the scores do not depend on them when the keys are zero).
    #[test]
    fn zero_keys_average_the_values() {
        let dev = Default::default();
        let q = normal([1, 1, 2, 2], &mut StdRng::seed_from_u64(1));
        let k = Tensor::<AD, 4>::zeros([1, 1, 3, 2], &dev).require_grad();
        let v = Tensor::<AD, 4>::from_data([[[[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]]], &dev)
            .require_grad();
        let out = autodiff_attention(q.clone(), k, v.clone());
        out.to_data().assert_approx_eq::<f32>(
            &TensorData::from([[[[3.0f32, 5.0], [3.0, 5.0]]]]),
            Tolerance::absolute(1e-6),
        );
        // d sum(out) / dv: each of the 2 queries gives every value weight 1/3
        let grads = out.sum().backward();
        v.grad(&grads).unwrap().into_data().assert_approx_eq::<f32>(
            &TensorData::from([[[[2.0f32 / 3.0; 2]; 3]]]),
            Tolerance::absolute(1e-6),
        );
        q.grad(&grads).unwrap().into_data().assert_approx_eq::<f32>(
            &TensorData::from([[[[0.0f32; 2]; 2]]]),
            Tolerance::absolute(1e-6),
        );
    }

    #[test]
    fn untracked_inputs_give_burns_forward() {
        let mut rng = StdRng::seed_from_u64(3);
        let [q, k, v] = [[1, 2, 4, 8], [1, 2, 6, 8], [1, 2, 6, 8]].map(|s| normal(s, &mut rng));
        let [q, k, v] = [q, k, v].map(|t| t.detach());
        let want = module::attention(
            q.clone(),
            k.clone(),
            v.clone(),
            None,
            None,
            Default::default(),
        );
        let got = autodiff_attention(q, k, v);
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(2e-5));
    }
}
