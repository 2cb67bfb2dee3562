//! Attention's forward with its row log-sum-exp, and its backward from them, as plain functions
//! (no autodiff node): the pieces of a hand-written backward that recomputes attention, such as
//! block checkpointing ([`crate::models::wan::checkpoint`]). On the CPU backend (f32) the
//! kernels of [`super::cpu`]; on any other backend tensor operations over chunks of `chunk`
//! queries, so that at most `[B, H, chunk, S]` scores live at once ([`query_chunk`] sizes the
//! chunks from a budget). Half-precision inputs are computed in f32 over groups of heads (at
//! most [`HALF_GROUP_VALUES`] key values per group upcast at once) and come back in their dtype;
//! the log-sum-exp is always f32.

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

/// Key (and value) values of one group of heads that half-precision inputs upcast to f32 at
/// once (`[B, S, heads, Dh]`, 128 MiB in f32).
pub const HALF_GROUP_VALUES: usize = 1 << 25;

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
    if q.dtype() != DType::F32 {
        return half_forward([q, k, v], HALF_GROUP_VALUES);
    }
    if let Some(d) = flex_dims::<B>(&q, &k, &v) {
        let [q, k, v] = [q, k, v].map(|t| contiguous::<4>(cast(t)));
        let (out, lse) = cpu::forward(values(&q), values(&k), values(&v), d);
        let out = tensor::<4>(cpu::tensor(out, [d.b, d.l, d.h, d.dh]));
        let lse = tensor::<4>(cpu::tensor(lse, [d.b, d.h, d.l, 1])).reshape([d.b, d.h, d.l]);
        return (cast(out), cast(lse));
    }
    let [b, l, h, dh] = q.dims();
    let scale = (dh as f64).powf(-0.5);
    let [q, k, v] = [q, k, v].map(|t| t.swap_dims(1, 2));
    let kt = k.swap_dims(2, 3);
    let (outs, lses): (Vec<_>, Vec<_>) = (0..l)
        .step_by(chunk.max(1))
        .map(|start| {
            let qc = q.clone().narrow(2, start, chunk.max(1).min(l - start));
            let scores = qc.matmul(kt.clone()).mul_scalar(scale);
            let max = scores.clone().max_dim(3);
            let exp = (scores - max.clone()).exp();
            let sum = exp.clone().sum_dim(3);
            (exp.matmul(v.clone()) / sum.clone(), max + sum.log())
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
    if q.dtype() != DType::F32 {
        return half_backward([q, k, v, out], lse, d_out, HALF_GROUP_VALUES);
    }
    if let Some(d) = flex_dims::<B>(&q, &k, &v) {
        let [q, k, v, out, d_out] = [q, k, v, out, d_out].map(|t| contiguous::<4>(cast(t)));
        let lse = contiguous::<3>(cast(lse));
        let inputs = [&q, &k, &v, &out, &lse, &d_out].map(values);
        let (dq, dk, dv) = cpu::backward(inputs, d);
        let back = |g, n| cast(tensor::<4>(cpu::tensor(g, [d.b, n, d.h, d.dh])));
        return (back(dq, d.l), back(dk, d.s), back(dv, d.s));
    }
    let [_, l, _, dh] = q.dims();
    let scale = (dh as f64).powf(-0.5);
    let [q, k, v, out, d_out] = [q, k, v, out, d_out].map(|t| t.swap_dims(1, 2));
    let lse = lse.unsqueeze_dim::<4>(3);
    let delta = (d_out.clone() * out).sum_dim(3);
    let (kt, vt) = (k.clone().swap_dims(2, 3), v.clone().swap_dims(2, 3));
    let (mut dk, mut dv) = (k.zeros_like(), v.zeros_like());
    let mut dqs = Vec::new();
    for start in (0..l).step_by(chunk.max(1)) {
        let n = chunk.max(1).min(l - start);
        let part = |t: &Tensor<B, 4>| t.clone().narrow(2, start, n);
        let (qc, doc) = (part(&q), part(&d_out));
        let probs = (qc.clone().matmul(kt.clone()).mul_scalar(scale) - part(&lse)).exp();
        dv = dv + probs.clone().swap_dims(2, 3).matmul(doc.clone());
        let ds = (probs * (doc.matmul(vt.clone()) - part(&delta))).mul_scalar(scale);
        dqs.push(ds.clone().matmul(k.clone()));
        dk = dk + ds.swap_dims(2, 3).matmul(qc);
    }
    let heads_last = |t: Tensor<B, 4>| t.swap_dims(1, 2);
    (
        heads_last(Tensor::cat(dqs, 2)),
        heads_last(dk),
        heads_last(dv),
    )
}

/// `(first head, heads)` of the groups of heads whose keys `[B, S, H, Dh]` hold at most
/// `values` values (at least one head per group).
fn head_groups(k: [usize; 4], values: usize) -> impl Iterator<Item = (usize, usize)> {
    let [b, s, h, dh] = k;
    let group = (values / (b * s * dh).max(1)).clamp(1, h.max(1));
    (0..h)
        .step_by(group)
        .map(move |start| (start, group.min(h - start)))
}

/// [`forward`] of half-precision inputs: f32 over groups of heads of at most `values` key
/// values; the output in the inputs' dtype, the log-sum-exp in f32.
fn half_forward<B: Backend>(
    [q, k, v]: [Tensor<B, 4>; 3],
    values: usize,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let (dtype, [b, s, ..]) = (q.dtype(), k.dims());
    let (outs, lses): (Vec<_>, Vec<_>) = head_groups(k.dims(), values)
        .map(|(start, n)| {
            let part = |t: &Tensor<B, 4>| f32(t.clone().narrow(2, start, n));
            let (out, lse) = forward(part(&q), part(&k), part(&v), query_chunk(b, n, s));
            (to_dtype(out, dtype), lse)
        })
        .unzip();
    (Tensor::cat(outs, 2), Tensor::cat(lses, 1))
}

/// [`backward`] of half-precision inputs, over the groups of heads of [`half_forward`].
fn half_backward<B: Backend>(
    [q, k, v, out]: [Tensor<B, 4>; 4],
    lse: Tensor<B, 3>,
    d_out: Tensor<B, 4>,
    values: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let (dtype, [b, s, ..]) = (q.dtype(), k.dims());
    let mut grads: [Vec<Tensor<B, 4>>; 3] = Default::default();
    for (start, n) in head_groups(k.dims(), values) {
        let part = |t: &Tensor<B, 4>| f32(t.clone().narrow(2, start, n));
        let inputs = [&q, &k, &v, &out].map(part);
        let lse = f32(lse.clone().narrow(1, start, n));
        let (dq, dk, dv) = backward(inputs, lse, part(&d_out), query_chunk(b, n, s));
        for (all, g) in grads.iter_mut().zip([dq, dk, dv]) {
            all.push(to_dtype(g, dtype));
        }
    }
    let [dq, dk, dv] = grads.map(|g| Tensor::cat(g, 2));
    (dq, dk, dv)
}

/// `t` in f32.
fn f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    to_dtype(t, DType::F32)
}

/// The sizes for the CPU kernels when `B` is the CPU backend and the inputs are f32.
fn flex_dims<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>) -> Option<Dims> {
    let single = [q, k, v].iter().all(|t| t.dtype() == DType::F32);
    (is::<B, Flex>() && single)
        .then(|| Dims::of(&q.dims(), &k.dims(), &v.dims()))
        .flatten()
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

    /// Half-precision inputs over groups of one and of two heads (and a shorter last group)
    /// give the f32 result to the inputs' precision.
    #[test]
    fn half_precision_in_head_groups_matches_f32() {
        let dev = Default::default();
        let normal =
            |shape: [usize; 4]| Tensor::<I, 4>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
        let (q, k, v, w) = (
            normal([2, 7, 3, 4]),
            normal([2, 5, 3, 4]),
            normal([2, 5, 3, 4]),
            normal([2, 7, 3, 4]),
        );
        let (out, lse) = forward(q.clone(), k.clone(), v.clone(), 3);
        let want = backward(
            [q.clone(), k.clone(), v.clone(), out.clone()],
            lse.clone(),
            w.clone(),
            3,
        );
        let f16 = |t: &Tensor<I, 4>| t.clone().cast(burn::tensor::FloatDType::F16);
        let tol = Tolerance::<f32>::absolute(2e-2);
        let close = |got: Tensor<I, 4>, want: &Tensor<I, 4>| {
            assert_eq!(got.dtype(), DType::F16);
            f32(got)
                .into_data()
                .assert_approx_eq(&want.clone().into_data(), tol);
        };
        assert_eq!(
            head_groups([2, 5, 3, 4], 2 * 5 * 4).collect::<Vec<_>>(),
            [(0, 1), (1, 1), (2, 1)]
        );
        assert_eq!(
            head_groups([2, 5, 3, 4], 4 * 5 * 4).collect::<Vec<_>>(),
            [(0, 2), (2, 1)]
        );
        for values in [1, 4 * 5 * 4, HALF_GROUP_VALUES] {
            let (h_out, h_lse) = half_forward([&q, &k, &v].map(f16), values);
            assert_eq!(h_lse.dtype(), DType::F32);
            close(h_out.clone(), &out);
            h_lse
                .clone()
                .into_data()
                .assert_approx_eq(&lse.clone().into_data(), tol);
            let (dq, dk, dv) = half_backward([&q, &k, &v, &out].map(f16), h_lse, f16(&w), values);
            for (got, want) in [dq, dk, dv].into_iter().zip([&want.0, &want.1, &want.2]) {
                close(got, want);
            }
        }
    }
}
