//! Scaled dot-product attention with its own backward under autodiff.
//!
//! burn 0.21's autodiff backend evaluates `attention` with its generic fallback: the score
//! matrix, its row maximum, exponential, row sum and the probabilities are separate tracked
//! operations, several `[B, H, L, S]` tensors of them are kept for the backward, and the softmax
//! is differentiated operation by operation. Here attention is one autodiff node instead. It
//! keeps the inputs, the output and the row log-sum-exp, and its backward recomputes the
//! probabilities (the backward of FlashAttention, Dao et al. 2022, section 3.1):
//!
//! ```text
//! P = exp(s Q Kᵀ - lse)    dV = Pᵀ dO    dP = dO Vᵀ    D = rowsum(dO ∘ O)
//! dS = s P ∘ (dP - D)      dQ = dS K     dK = dSᵀ Q
//! ```
//!
//! Two implementations:
//! - on the CPU backend (`Flex` and `Autodiff<Flex>`, f32): kernels over the
//!   `[B, L, H, Dh]` layout of the projections (no head transpose is materialised), one rayon
//!   task per (batch, head), strided gemm products and a vectorised `exp` ([`cpu`]);
//! - under autodiff on the other built-in backends (wgpu, cuda, ndarray with their features):
//!   the same node built from the inner backend's tensor operations over chunks of queries, so
//!   memory stays linear in the tokens ([`autodiff_attention`], [`recompute`]).
//!
//! [`attention`] picks the implementation at run time from its backend's type
//! ([`crate::ops::dispatch`]); half-precision inputs are computed in f32 and the output returned
//! in their dtype (under autodiff on the CPU backend through [`autodiff_attention`]). Any other backend, and wgpu or cuda without autodiff, takes burn's
//! `attention`.

mod autodiff;
mod cpu;
mod flex;
pub mod recompute;

use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, module, ops::AttentionModuleOptions, DType, Tensor},
};

pub use autodiff::autodiff_attention;
use cpu::Dims;

use crate::{
    backend::Flex,
    ops::dispatch::{cast, is},
    train::precision::to_dtype,
};

/// Bytes the CPU kernels keep per worker thread between calls for `queries` queries and `keys`
/// keys: two buffers of one tile of scores (at most 8 MiB).
pub fn cpu_scratch_bytes(queries: usize, keys: usize) -> usize {
    cpu::scratch_bytes(queries, keys)
}

/// Scaled dot-product attention `softmax(Q Kᵀ / sqrt(Dh)) V` without mask or bias, in the
/// token-major layout of the projections; the implementation depends on the backend (module
/// docs). All of them agree with burn's `attention` in value and gradient (tested).
///
/// # Shapes
/// - `q`: `[B, L, H, Dh]`, `k`, `v`: `[B, S, H, Dh]` -> `[B, L, H, Dh]`
pub fn attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let dtype = q.dtype();
    if let Some(d) = Dims::of(&q.dims(), &k.dims(), &v.dims()) {
        if is::<B, Autodiff<Flex>>() && dtype == DType::F32 {
            return cast(flex::autodiff_attention(cast(q), cast(k), cast(v), d));
        }
        if is::<B, Flex>() {
            let [q, k, v] = [q, k, v].map(|t| cast(to_dtype(t, DType::F32)));
            return to_dtype(cast(flex::attention(q, k, v, d)), dtype);
        }
    }
    let heads_first = |t: Tensor<B, 4>| t.swap_dims(1, 2);
    let [q, k, v] = [q, k, v].map(heads_first);
    macro_rules! fused_on {
        ($inner:ty) => {
            if is::<B, Autodiff<$inner>>() {
                let out = autodiff_attention::<$inner>(cast(q), cast(k), cast(v));
                return heads_first(cast(out));
            }
        };
    }
    fused_on!(Flex);
    #[cfg(feature = "wgpu")]
    fused_on!(crate::backend::Wgpu);
    #[cfg(feature = "cuda")]
    fused_on!(crate::backend::Cuda);
    #[cfg(feature = "ndarray")]
    fused_on!(crate::backend::NdArray);
    let options = AttentionModuleOptions::default();
    heads_first(module::attention(q, k, v, None, None, options))
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
        assert_close(run(autodiff_attention::<I>, &qkv, &w), run(burns, &qkv, &w));
    }

    /// [`attention`] in the `[B, L, H, Dh]` layout (the flex kernels on the CPU backend) against
    /// burn's in `[B, H, L, Dh]`, with and without autodiff.
    #[test]
    fn dispatched_attention_equals_burns() {
        let mut rng = StdRng::seed_from_u64(11);
        let qkv = [[2, 5, 3, 4], [2, 7, 3, 4], [2, 7, 3, 4]].map(|s| normal(s, &mut rng));
        let w = normal([2, 5, 3, 4], &mut rng);
        let burns = |q: Tensor<AD, 4>, k: Tensor<AD, 4>, v: Tensor<AD, 4>| {
            let [q, k, v] = [q, k, v].map(|t| t.swap_dims(1, 2));
            module::attention(q, k, v, None, None, Default::default()).swap_dims(1, 2)
        };
        let expected = run(burns, &qkv, &w);
        assert_close(run(attention::<AD>, &qkv, &w), expected.clone());
        let [q, k, v] = qkv.map(|t| t.inner());
        assert_close([attention(q, k, v)], [expected[0].clone()]);
    }

    fn assert_close<const N: usize>(got: [Tensor<I, 4>; N], want: [Tensor<I, 4>; N]) {
        for (got, want) in got.into_iter().zip(want) {
            got.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(2e-5));
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
