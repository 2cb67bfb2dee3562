//! Attention kernels for the CPU backend (flex, f32) in the `[B, L, H, Dh]` layout of the
//! projections, so no head transpose is materialised. Each (batch, head) pair is one rayon task:
//! it walks the queries in tiles of `TILE_VALUES / S` rows, whose scores `[tile, S]` come from
//! one strided matrix product (gemm); the row softmax uses a vectorisable `exp`, and the result
//! is gathered back into the token-major layout. The backward recomputes the probabilities from
//! the saved row log-sum-exp (module docs of [`super`]), tile by tile, accumulating the key and
//! value gradients; one `[tile, S]` pair of buffers per worker thread (8 MiB) is all the
//! kernels hold beyond their inputs and outputs, at any number of tokens.

use std::cell::Cell;

use burn::tensor::{Shape, TensorData};
use burn_flex::FlexTensor;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::ops::cpu_math::exp;

/// Sizes of one attention call: `q` `[b, l, h, dh]`, `k` and `v` `[b, s, h, dh]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub b: usize,
    pub l: usize,
    pub s: usize,
    pub h: usize,
    pub dh: usize,
}

impl Dims {
    /// The sizes of `q`, `k`, `v` if they fit the layout and are non-empty.
    pub fn of(q: &[usize], k: &[usize], v: &[usize]) -> Option<Self> {
        let &[b, l, h, dh] = q else { return None };
        let &[_, s, _, _] = k else { return None };
        let ok = k == v && k == [b, s, h, dh] && b * l * s * h * dh > 0;
        ok.then_some(Self { b, l, s, h, dh })
    }

    fn scale(&self) -> f32 {
        (self.dh as f32).powf(-0.5)
    }

    /// Head `bh` (= batch * heads + head) of a `[b, n, h, dh]` tensor as an `[n, dh]` matrix.
    fn head(&self, bh: usize, n: usize) -> View {
        let (b, h) = (bh / self.h, bh % self.h);
        View {
            offset: b * n * self.h * self.dh + h * self.dh,
            rows: n,
            cols: self.dh,
            rs: self.h * self.dh,
            cs: 1,
        }
    }
}

/// A strided `rows x cols` matrix inside a slice: element `(i, j)` at `offset + i rs + j cs`.
#[derive(Clone, Copy, Debug)]
struct View {
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl View {
    fn dense(rows: usize, cols: usize) -> Self {
        let (offset, rs, cs) = (0, cols, 1);
        Self {
            offset,
            rows,
            cols,
            rs,
            cs,
        }
    }

    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// One past the last element (rows and cols are at least 1).
    /// Rows `start..start + n` of the view.
    fn rows(self, start: usize, n: usize) -> Self {
        Self {
            offset: self.offset + start * self.rs,
            rows: n,
            ..self
        }
    }

    fn end(&self) -> usize {
        self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
    }
}

/// `dst = scale * lhs rhs` on one thread.
/// `dst = scale lhs rhs`, or `dst += scale lhs rhs` when `accumulate`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    d: View,
    lhs: &[f32],
    a: View,
    rhs: &[f32],
    b: View,
    scale: f32,
    accumulate: bool,
) {
    assert!(a.rows == d.rows && b.cols == d.cols && a.cols == b.rows && a.cols > 0);
    assert!(d.end() <= dst.len() && a.end() <= lhs.len() && b.end() <= rhs.len());
    // SAFETY: gemm reads `lhs` and `rhs` and writes `dst` only at the elements of the three
    // views, which the asserts above keep inside the slices; `dst` is borrowed mutably, so it
    // aliases neither input, and the dense or head views never map two elements to one address.
    unsafe {
        gemm(
            d.rows,
            d.cols,
            a.cols,
            dst.as_mut_ptr().add(d.offset),
            d.cs as isize,
            d.rs as isize,
            accumulate,
            lhs.as_ptr().add(a.offset),
            a.cs as isize,
            a.rs as isize,
            rhs.as_ptr().add(b.offset),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// `row[j] = e^(row[j] - shift)`; returns the sum. Also compiled for AVX2 (8 lanes instead of
/// SSE2's 4), which is taken where the CPU has it; the arithmetic is the same.
fn exp_shifted(row: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked on the line above).
        return unsafe { exp_shifted_avx2(row, shift) };
    }
    exp_shifted_portable(row, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_avx2(row: &mut [f32], shift: f32) -> f32 {
    exp_shifted_portable(row, shift)
}

#[inline(always)]
fn exp_shifted_portable(row: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for chunk in &mut chunks {
        for (x, a) in chunk.iter_mut().zip(&mut acc) {
            *x = exp(*x - shift);
            *a += *x;
        }
    }
    let mut sum: f32 = chunks
        .into_remainder()
        .iter_mut()
        .map(|x| {
            *x = exp(*x - shift);
            *x
        })
        .sum();
    sum += acc.iter().sum::<f32>();
    sum
}

/// Score values one tile of queries holds (per thread and buffer): tiles of
/// `TILE_VALUES / S` queries (at least 16) keep the kernels' memory linear in the tokens.
const TILE_VALUES: usize = 1 << 20;

/// Bytes of one worker thread's two scratch buffers for `l` queries and `s` keys (kept by the
/// thread between calls).
pub(super) fn scratch_bytes(l: usize, s: usize) -> usize {
    2 * tile_rows(l, s) * s * std::mem::size_of::<f32>()
}

/// Queries per tile for `s` keys.
fn tile_rows(l: usize, s: usize) -> usize {
    (TILE_VALUES / s.max(1)).max(16).min(l.max(1))
}

thread_local! {
    /// Per-thread `[tile, S]` buffers reused across calls: the probabilities and their gradient.
    static SCRATCH: [Cell<Vec<f32>>; 2] = const { [Cell::new(Vec::new()), Cell::new(Vec::new())] };
}

/// A buffer of `len` values from this thread's scratch `slot`, given back when dropped. Its
/// contents are left over from an earlier call: every user overwrites it whole (a matrix product
/// that does not read its destination), so no call pays for zeroing or fresh pages.
struct Scratch {
    slot: usize,
    buf: Vec<f32>,
}

fn scratch(slot: usize, len: usize) -> Scratch {
    let mut buf = SCRATCH.with(|s| s[slot].take());
    buf.resize(len, 0.0);
    Scratch { slot, buf }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // during thread teardown the slot may be gone: the buffer is then just freed
        let _ = SCRATCH.try_with(|s| s[self.slot].set(buf));
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf
    }
}

/// The largest element (NaN if any is NaN).
fn max(row: &[f32]) -> f32 {
    let nan = row.iter().any(|x| x.is_nan());
    let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if nan {
        f32::NAN
    } else {
        m
    }
}

/// Copies head `bh`'s dense `[n, dh]` block into its place in a `[b, n, h, dh]` buffer.
fn scatter(dst: &mut [f32], view: View, block: &[f32]) {
    for (i, src) in block.chunks_exact(view.cols).enumerate() {
        let at = view.offset + i * view.rs;
        dst[at..at + view.cols].copy_from_slice(src);
    }
}

/// A contiguous f32 flex tensor.
pub(super) fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, Shape::from(shape.to_vec())))
}

/// Output `[b, l, h, dh]` and row log-sum-exp `[b, h, l]` of `softmax(q kᵀ / sqrt(dh)) v`.
pub(super) fn forward(q: &[f32], k: &[f32], v: &[f32], d: Dims) -> (Vec<f32>, Vec<f32>) {
    forward_tiled(q, k, v, d, tile_rows(d.l, d.s))
}

/// [`forward`] over tiles of `tile` queries.
fn forward_tiled(q: &[f32], k: &[f32], v: &[f32], d: Dims, tile: usize) -> (Vec<f32>, Vec<f32>) {
    let heads: Vec<(Vec<f32>, Vec<f32>)> = (0..d.b * d.h)
        .into_par_iter()
        .map(|bh| {
            let (qv, kv) = (d.head(bh, d.l), d.head(bh, d.s));
            let mut p = scratch(0, tile * d.s);
            let mut out = vec![0.0; d.l * d.dh];
            let mut lse = Vec::with_capacity(d.l);
            for start in (0..d.l).step_by(tile) {
                let n = tile.min(d.l - start);
                let scores = View::dense(n, d.s);
                let qt = qv.rows(start, n);
                matmul(&mut p, scores, q, qt, k, kv.t(), d.scale(), false);
                lse.extend(p[..n * d.s].chunks_exact_mut(d.s).map(|row| {
                    let m = max(row);
                    let sum = exp_shifted(row, m);
                    row.iter_mut().for_each(|x| *x /= sum);
                    m + sum.ln()
                }));
                let rows = View::dense(d.l, d.dh).rows(start, n);
                matmul(&mut out, rows, &p, scores, v, kv, 1.0, false);
            }
            (out, lse)
        })
        .collect();
    let mut out = vec![0.0; d.b * d.l * d.h * d.dh];
    let mut lse = Vec::with_capacity(d.b * d.h * d.l);
    for (bh, (block, rows)) in heads.into_iter().enumerate() {
        scatter(&mut out, d.head(bh, d.l), &block);
        lse.extend(rows);
    }
    (out, lse)
}

/// Gradients `(dq, dk, dv)` in the layouts of `q`, `k`, `v`, from the forward's inputs, output
/// `out`, row log-sum-exp `lse` and the output gradient `d_out`.
pub(super) fn backward(inputs: [&[f32]; 6], d: Dims) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    backward_tiled(inputs, d, tile_rows(d.l, d.s))
}

/// [`backward`] over tiles of `tile` queries.
fn backward_tiled(
    [q, k, v, out, lse, d_out]: [&[f32]; 6],
    d: Dims,
    tile: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    type Grads = (Vec<f32>, Vec<f32>, Vec<f32>);
    let heads: Vec<Grads> = (0..d.b * d.h)
        .into_par_iter()
        .map(|bh| {
            let (qv, kv) = (d.head(bh, d.l), d.head(bh, d.s));
            let (mut p, mut ds) = (scratch(0, tile * d.s), scratch(1, tile * d.s));
            let lse = &lse[bh * d.l..(bh + 1) * d.l];
            let scale = d.scale();
            let mut dq = vec![0.0; d.l * d.dh];
            let mut dk = vec![0.0; d.s * d.dh];
            let mut dv = vec![0.0; d.s * d.dh];
            let keys = View::dense(d.s, d.dh);
            for (t, start) in (0..d.l).step_by(tile).enumerate() {
                let n = tile.min(d.l - start);
                let scores = View::dense(n, d.s);
                let (qt, acc) = (qv.rows(start, n), t > 0);
                matmul(&mut p, scores, q, qt, k, kv.t(), scale, false);
                for (row, &m) in p.chunks_exact_mut(d.s).zip(&lse[start..start + n]) {
                    exp_shifted(row, m);
                }
                matmul(&mut dv, keys, &p, scores.t(), d_out, qt, 1.0, acc);
                // dP = dO vᵀ, then dS = scale P ∘ (dP - rowsum(dO ∘ O)) in place
                matmul(&mut ds, scores, d_out, qt, v, kv.t(), 1.0, false);
                for (i, (ds_row, p_row)) in ds
                    .chunks_exact_mut(d.s)
                    .zip(p.chunks_exact(d.s))
                    .take(n)
                    .enumerate()
                {
                    let at = qt.offset + i * qt.rs;
                    let (g, o) = (&d_out[at..at + d.dh], &out[at..at + d.dh]);
                    let row: f32 = g.iter().zip(o).map(|(g, o)| g * o).sum();
                    for (x, &p) in ds_row.iter_mut().zip(p_row) {
                        *x = p * (*x - row) * scale;
                    }
                }
                let rows = View::dense(d.l, d.dh).rows(start, n);
                matmul(&mut dq, rows, &ds, scores, k, kv, 1.0, false);
                matmul(&mut dk, keys, &ds, scores.t(), q, qt, 1.0, acc);
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dq = vec![0.0; d.b * d.l * d.h * d.dh];
    let mut dk = vec![0.0; d.b * d.s * d.h * d.dh];
    let mut dv = dk.clone();
    for (bh, (gq, gk, gv)) in heads.into_iter().enumerate() {
        scatter(&mut dq, d.head(bh, d.l), &gq);
        scatter(&mut dk, d.head(bh, d.s), &gk);
        scatter(&mut dv, d.head(bh, d.s), &gv);
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One head, two queries, two keys: scores by hand.
    #[test]
    fn forward_by_hand() {
        let d = Dims::of(&[1, 2, 1, 1], &[1, 2, 1, 1], &[1, 2, 1, 1]).unwrap();
        // scores q_i k_j: [[0, 0], [0, ln 3]] -> weights [[1/2, 1/2], [1/4, 3/4]]
        let (q, k, v) = ([0.0, 3f32.ln()], [0.0, 1.0], [2.0, 6.0]);
        let (out, lse) = forward(&q, &k, &v, d);
        assert!(
            (out[0] - 4.0).abs() < 1e-6 && (out[1] - 5.0).abs() < 1e-6,
            "{out:?}"
        );
        assert!((lse[0] - 2f32.ln()).abs() < 1e-6 && (lse[1] - 4f32.ln()).abs() < 1e-6);
    }

    /// Tiles of 3 queries (the last one shorter) give the one-tile results.
    #[test]
    fn tiles_give_the_whole_result() {
        let d = Dims::of(&[2, 8, 3, 4], &[2, 5, 3, 4], &[2, 5, 3, 4]).unwrap();
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
        };
        let (q, k, v) = (values(192, 0.1), values(120, 0.7), values(120, 1.3));
        let g = values(192, 2.1);
        let (out, lse) = forward_tiled(&q, &k, &v, d, 8);
        let (out3, lse3) = forward_tiled(&q, &k, &v, d, 3);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(&out, &out3) && close(&lse, &lse3));
        let whole = backward_tiled([&q, &k, &v, &out, &lse, &g], d, 8);
        let tiled = backward_tiled([&q, &k, &v, &out, &lse, &g], d, 3);
        assert!(
            close(&whole.0, &tiled.0) && close(&whole.1, &tiled.1) && close(&whole.2, &tiled.2)
        );
        assert!(
            whole.1.iter().any(|x| x.abs() > 1e-3),
            "non-trivial key gradients"
        );
    }

    #[test]
    fn nan_scores_give_nan_rows() {
        let d = Dims::of(&[1, 1, 1, 1], &[1, 2, 1, 1], &[1, 2, 1, 1]).unwrap();
        let (out, _) = forward(&[1.0], &[f32::NAN, 0.0], &[1.0, 1.0], d);
        assert!(out[0].is_nan());
    }
}
