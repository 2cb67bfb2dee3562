//! Attention's forward with its row log-sum-exp, and its backward from them, as plain functions
//! (no autodiff node): the pieces of a hand-written backward that recomputes attention, such as
//! block checkpointing ([`crate::models::wan::checkpoint`]). On the CPU backend (f32) the
//! kernels of [`super::cpu`]; on any other backend tensor operations over chunks of `chunk`
//! queries, so that at most `[B, H, chunk, S]` scores live at once ([`query_chunk`] sizes the
//! chunks from a budget). Half-precision inputs are computed in f32 (the CPU kernels take them
//! upcast; the tensor operations upcast the keys and values and one chunk of queries at a time)
//! and the results come back in the inputs' dtype; the log-sum-exp is always f32.

use burn::tensor::{backend::Backend, DType, Tensor};

use super::cpu::{self, Dims};
use crate::{
    backend::Flex,
    ops::cpu_math::values,
    ops::dispatch::{cast, is},
    ops::flex_node::{contiguous, tensor},
    train::precision::to_dtype,
};

/// Score values one chunk of queries may hold at once (`[B, H, chunk, S]`, 128 MiB in f32).
pub const SCORE_BUDGET: usize = 1 << 25;

/// Queries per chunk so that one chunk's scores stay within [`SCORE_BUDGET`]: between 16 and
/// 1024 (below 16 queries per product the matrix products stop paying for themselves).
pub fn query_chunk(batch: usize, heads: usize, keys: usize) -> usize {
    (SCORE_BUDGET / (batch * heads * keys).max(1)).clamp(16, 1024)
}

/// `softmax(q kᵀ / sqrt(Dh)) v` and the row log-sum-exp of the scaled scores.
///
/// # Shapes
/// - `q`: `[B, L, H, Dh]`, `k`, `v`: `[B, S, H, Dh]` -> (`[B, L, H, Dh]`, `[B, H, L]`)
pub fn forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    chunk: usize,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let dtype = q.dtype();
    if let Some(d) = flex_dims::<B>(&q, &k, &v) {
        let [q, k, v] = [q, k, v].map(|t| contiguous::<4>(cast(f32(t))));
        let (out, lse) = cpu::forward(values(&q), values(&k), values(&v), d);
        let out = tensor::<4>(cpu::tensor(out, [d.b, d.l, d.h, d.dh]));
        let lse = tensor::<4>(cpu::tensor(lse, [d.b, d.h, d.l, 1])).reshape([d.b, d.h, d.l]);
        return (to_dtype(cast(out), dtype), cast(lse));
    }
    let [b, l, h, dh] = q.dims();
    let scale = (dh as f64).powf(-0.5);
    let q = q.swap_dims(1, 2);
    let [k, v] = [k, v].map(|t| f32(t.swap_dims(1, 2)));
    let kt = k.swap_dims(2, 3);
    let (outs, lses): (Vec<_>, Vec<_>) = (0..l)
        .step_by(chunk.max(1))
        .map(|start| {
            let qc = f32(q.clone().narrow(2, start, chunk.max(1).min(l - start)));
            let scores = qc.matmul(kt.clone()).mul_scalar(scale);
            let max = scores.clone().max_dim(3);
            let exp = (scores - max.clone()).exp();
            let sum = exp.clone().sum_dim(3);
            let out = exp.matmul(v.clone()) / sum.clone();
            (to_dtype(out, dtype), max + sum.log())
        })
        .unzip();
    let out = Tensor::cat(outs, 2).swap_dims(1, 2);
    (out, Tensor::cat(lses, 2).reshape([b, h, l]))
}

/// The gradients `(dq, dk, dv)` from the inputs, the output and log-sum-exp of [`forward`] and
/// the output gradient (FlashAttention's backward, Dao et al. 2022: `P = exp(s q kᵀ - lse)`,
/// `dv = Pᵀ do`, `dS = s P ∘ (do vᵀ - rowsum(do ∘ o))`, `dq = dS k`, `dk = dSᵀ q`).
///
/// # Shapes
/// - `q`, `out`, `d_out`: `[B, L, H, Dh]`, `k`, `v`: `[B, S, H, Dh]`, `lse`: `[B, H, L]`
/// - output: gradients in the shapes of `q`, `k`, `v`
pub fn backward<B: Backend>(
    [q, k, v, out]: [Tensor<B, 4>; 4],
    lse: Tensor<B, 3>,
    d_out: Tensor<B, 4>,
    chunk: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let dtype = q.dtype();
    if let Some(d) = flex_dims::<B>(&q, &k, &v) {
        let [q, k, v, out, d_out] =
            [q, k, v, out, d_out].map(|t| contiguous::<4>(cast(f32(t))));
        let lse = contiguous::<3>(cast(lse));
        let inputs = [&q, &k, &v, &out, &lse, &d_out].map(values);
        let (dq, dk, dv) = cpu::backward(inputs, d);
        let back = |g, n| to_dtype(cast(tensor::<4>(cpu::tensor(g, [d.b, n, d.h, d.dh]))), dtype);
        return (back(dq, d.l), back(dk, d.s), back(dv, d.s));
    }
    let [_, l, _, dh] = q.dims();
    let scale = (dh as f64).powf(-0.5);
    let [q, out, d_out] = [q, out, d_out].map(|t| t.swap_dims(1, 2));
    let [k, v] = [k, v].map(|t| f32(t.swap_dims(1, 2)));
    let lse = lse.unsqueeze_dim::<4>(3);
    let (kt, vt) = (k.clone().swap_dims(2, 3), v.clone().swap_dims(2, 3));
    let (mut dk, mut dv) = (k.zeros_like(), v.zeros_like());
    let mut dqs = Vec::new();
    for start in (0..l).step_by(chunk.max(1)) {
        let n = chunk.max(1).min(l - start);
        let part = |t: &Tensor<B, 4>| f32(t.clone().narrow(2, start, n));
        let (qc, doc) = (part(&q), part(&d_out));
        let delta = (doc.clone() * part(&out)).sum_dim(3);
        let probs = (qc.clone().matmul(kt.clone()).mul_scalar(scale) - part(&lse)).exp();
        dv = dv + probs.clone().swap_dims(2, 3).matmul(doc.clone());
        let ds = (probs * (doc.matmul(vt.clone()) - delta)).mul_scalar(scale);
        dqs.push(to_dtype(ds.clone().matmul(k.clone()), dtype));
        dk = dk + ds.swap_dims(2, 3).matmul(qc);
    }
    let heads_last = |t: Tensor<B, 4>| to_dtype(t.swap_dims(1, 2), dtype);
    (
        heads_last(Tensor::cat(dqs, 2)),
        heads_last(dk),
        heads_last(dv),
    )
}

/// The sizes for the CPU kernels when `B` is the CPU backend.
fn flex_dims<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>) -> Option<Dims> {
    is::<B, Flex>()
        .then(|| Dims::of(&q.dims(), &k.dims(), &v.dims()))
        .flatten()
}

/// `t` in f32.
fn f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    to_dtype(t, DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::DefaultBackend, ops::attention::attention};
    use burn::{
        backend::Autodiff,
        tensor::{Distribution, Tolerance},
    };

    type I = DefaultBackend;
    type AD = Autodiff<I>;
    type Grads = (Tensor<I, 4>, Tensor<I, 4>, Tensor<I, 4>);

    /// Forward and backward against the autodiff of [`attention`]: on the CPU backend the
    /// kernels, and the chunked tensor operations on any backend (queries in chunks of 3).
    #[test]
    fn forward_and_backward_match_autodiff() {
        let dev = Default::default();
        let normal =
            |shape: [usize; 4]| Tensor::<I, 4>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
        // [B, L, H, Dh]: 7 queries, 5 keys
        let (q, k, v) = (
            normal([2, 7, 3, 4]),
            normal([2, 5, 3, 4]),
            normal([2, 5, 3, 4]),
        );
        let w = normal([2, 7, 3, 4]);
        let tracked = |t: &Tensor<I, 4>| Tensor::<AD, 4>::from_inner(t.clone()).require_grad();
        let (qa, ka, va) = (tracked(&q), tracked(&k), tracked(&v));
        let want = attention(qa.clone(), ka.clone(), va.clone());
        let grads = (want.clone() * Tensor::from_inner(w.clone()))
            .sum()
            .backward();
        let tol = Tolerance::<f32>::absolute(1e-5);
        let check = |(out, lse): (Tensor<I, 4>, Tensor<I, 3>),
                     backward: &dyn Fn(Tensor<I, 4>, Tensor<I, 3>) -> Grads| {
            out.clone()
                .into_data()
                .assert_approx_eq(&want.clone().inner().into_data(), tol);
            let (dq, dk, dv) = backward(out, lse);
            for (got, t) in [(dq, &qa), (dk, &ka), (dv, &va)] {
                got.into_data()
                    .assert_approx_eq(&t.grad(&grads).unwrap().into_data(), tol);
            }
        };
        let qkv = [q.clone(), k.clone(), v.clone()];
        check(forward(q.clone(), k.clone(), v.clone(), 3), &|out, lse| {
            let [q, k, v] = qkv.clone();
            backward([q, k, v, out], lse, w.clone(), 3)
        });
        // the chunked tensor operations also on the CPU backend (through a backend the kernels
        // do not take: autodiff's, untracked)
        let ad = |t: &Tensor<I, 4>| Tensor::<AD, 4>::from_inner(t.clone());
        let (out, lse) = forward(ad(&q), ad(&k), ad(&v), 3);
        check((out.inner(), lse.inner()), &|out, lse| {
            let (dq, dk, dv) = backward(
                [ad(&q), ad(&k), ad(&v), Tensor::from_inner(out)],
                Tensor::from_inner(lse),
                ad(&w),
                3,
            );
            (dq.inner(), dk.inner(), dv.inner())
        });
    }
}
