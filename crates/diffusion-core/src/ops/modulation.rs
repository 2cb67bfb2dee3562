//! The adaLN operations of a DiT block with per-sample `[B, 1, D]` vectors (Peebles & Xie 2023,
//! Wan's `FP32LayerNorm` + `scale_shift_table`), with CPU kernels:
//! - [`modulate`]: `LN(x) (1 + scale) + shift`, the layer norm without affine parameters;
//! - [`gated_residual`]: `x + h gate`.
//!
//! burn's CPU backend has fast paths for a row broadcast over a whole tensor, not for one row per
//! sample: with a batch above one it walked these products element by element, 13% of a `wan`
//! PRFL step. On the CPU backend (f32) both operations are single passes over contiguous rows on
//! both cores, each one autodiff node. The modulation keeps its input and `scale`; its backward
//! recomputes the row statistics, with `n = (x - mean) / std`, `dn = g (1 + scale)`:
//!
//! ```text
//! d shift = Σ_L g    d scale = Σ_L g ∘ n    dx = (dn - mean(dn) - n mean(dn ∘ n)) / std
//! ```
//!
//! The gated residual keeps `h` and `gate`: `dx = g`, `dh = g gate`, `d gate = Σ_L g ∘ h`. Other
//! backends take the tensor-operation forms ([`crate::ops::dispatch`]).

use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, DType, Tensor, TensorData},
};
use burn_autodiff::{
    checkpoint::base::Checkpointer,
    grads::Gradients,
    ops::{Backward, Ops},
};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::{
    backend::Flex,
    ops::cpu_math::values,
    ops::dispatch::{cast, is},
    ops::flex_node::{contiguous, output_grad, record, register, split, tensor},
};

/// `LN(x) (1 + scale) + shift`, the layer norm over the last axis without affine parameters.
///
/// # Shapes
/// - `x`: `[B, L, D]`; `shift`, `scale`: `[B, 1, D]` -> `[B, L, D]`
pub fn modulate<B: Backend>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 3>,
    scale: Tensor<B, 3>,
    eps: f64,
) -> Tensor<B, 3> {
    if let Some(rows) = Rows::of(&x, [&shift, &scale]) {
        if is::<B, Autodiff<Flex>>() {
            return cast(autodiff_modulate(
                cast(x),
                cast(shift),
                cast(scale),
                eps,
                rows,
            ));
        }
        if is::<B, Flex>() {
            let [x, shift, scale] = [x, shift, scale].map(|t| contiguous::<3>(cast(t)));
            let y = rows.modulate(values(&x), values(&shift), values(&scale), eps);
            return cast(tensor::<3>(rows.tensor(y, rows.l)));
        }
    }
    modulate_ops(x, shift, scale, eps)
}

/// `x + h gate`.
///
/// # Shapes
/// - `x`, `h`: `[B, L, D]`; `gate`: `[B, 1, D]` -> `[B, L, D]`
pub fn gated_residual<B: Backend>(
    x: Tensor<B, 3>,
    h: Tensor<B, 3>,
    gate: Tensor<B, 3>,
) -> Tensor<B, 3> {
    if let Some(rows) = Rows::of(&x, [&gate, &gate]).filter(|_| h.dims() == x.dims()) {
        if is::<B, Autodiff<Flex>>() {
            return cast(autodiff_gated(cast(x), cast(h), cast(gate), rows));
        }
        if is::<B, Flex>() {
            let [x, h, gate] = [x, h, gate].map(|t| contiguous::<3>(cast(t)));
            let y = rows.gated(values(&x), values(&h), values(&gate));
            return cast(tensor::<3>(rows.tensor(y, rows.l)));
        }
    }
    x + h * gate
}

/// [`modulate`] with tensor operations, on any backend.
fn modulate_ops<B: Backend>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 3>,
    scale: Tensor<B, 3>,
    eps: f64,
) -> Tensor<B, 3> {
    let (var, mean) = x.clone().var_mean_bias(2);
    let norm = (x - mean).div(var.add_scalar(eps).sqrt());
    norm * scale.add_scalar(1.0) + shift
}

/// The sizes of an f32 `[B, L, D]` input with `[B, 1, D]` vectors.
#[derive(Clone, Copy, Debug)]
struct Rows {
    b: usize,
    l: usize,
    d: usize,
}

impl Rows {
    fn of<B: Backend>(x: &Tensor<B, 3>, vectors: [&Tensor<B, 3>; 2]) -> Option<Self> {
        let [b, l, d] = x.dims();
        let fits = x.dtype() == DType::F32
            && b * l * d > 0
            && vectors
                .iter()
                .all(|v| v.dims() == [b, 1, d] && v.dtype() == DType::F32);
        fits.then_some(Self { b, l, d })
    }

    /// A flex tensor `[B, len, D]`.
    fn tensor(&self, values: Vec<f32>, len: usize) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, [self.b, len, self.d]))
    }

    /// `f(row, sample)` for every `[D]` row of a fresh `[B, L, D]` output, on rayon's threads.
    fn map_rows(&self, f: impl Fn(&mut [f32], usize, usize) + Sync) -> Vec<f32> {
        let mut out = vec![0.0f32; self.b * self.l * self.d];
        out.par_chunks_mut(self.d)
            .enumerate()
            .for_each(|(row, y)| f(y, row, row / self.l));
        out
    }

    /// For every sample, `K` sums over its `L` rows of `[D]` terms that `add(row, sums)` adds:
    /// `K` tensors `[B, D]`, one sample per rayon task.
    fn per_sample_sums<const K: usize>(
        &self,
        add: impl Fn(usize, &mut [Vec<f32>; K]) + Sync,
    ) -> [Vec<f32>; K] {
        let per_sample: Vec<[Vec<f32>; K]> = (0..self.b)
            .into_par_iter()
            .map(|b| {
                let mut sums = std::array::from_fn(|_| vec![0.0f32; self.d]);
                for row in b * self.l..(b + 1) * self.l {
                    add(row, &mut sums);
                }
                sums
            })
            .collect();
        std::array::from_fn(|k| {
            per_sample
                .iter()
                .flat_map(|s| s[k].iter().copied())
                .collect()
        })
    }

    /// Mean and reciprocal standard deviation (biased variance) of a row.
    fn stats(row: &[f32], eps: f64) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + eps as f32).sqrt())
    }

    fn modulate(&self, x: &[f32], shift: &[f32], scale: &[f32], eps: f64) -> Vec<f32> {
        let d = self.d;
        self.map_rows(|y, row, b| {
            let x = &x[row * d..(row + 1) * d];
            let (mean, rstd) = Self::stats(x, eps);
            let (t, s) = (&shift[b * d..(b + 1) * d], &scale[b * d..(b + 1) * d]);
            for i in 0..d {
                y[i] = (x[i] - mean) * rstd * (1.0 + s[i]) + t[i];
            }
        })
    }

    /// Gradients of [`modulate`]: `(dx [B, L, D], d shift [B, D], d scale [B, D])`.
    fn modulate_backward(
        &self,
        x: &[f32],
        scale: &[f32],
        g: &[f32],
        eps: f64,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = self.d;
        let stats: Vec<(f32, f32)> = x.par_chunks(d).map(|x| Self::stats(x, eps)).collect();
        let dx = self.map_rows(|dx, row, b| {
            let (x, g) = (&x[row * d..(row + 1) * d], &g[row * d..(row + 1) * d]);
            let (mean, rstd) = stats[row];
            let s = &scale[b * d..(b + 1) * d];
            let (mut m1, mut m2) = (0.0f32, 0.0f32);
            for i in 0..d {
                let dn = g[i] * (1.0 + s[i]);
                m1 += dn;
                m2 += dn * (x[i] - mean) * rstd;
            }
            let (m1, m2) = (m1 / d as f32, m2 / d as f32);
            for i in 0..d {
                let n = (x[i] - mean) * rstd;
                dx[i] = (g[i] * (1.0 + s[i]) - m1 - n * m2) * rstd;
            }
        });
        let [dt, ds] = self.per_sample_sums(|row, [dt, ds]| {
            let (x, g) = (&x[row * d..(row + 1) * d], &g[row * d..(row + 1) * d]);
            let (mean, rstd) = stats[row];
            for i in 0..d {
                dt[i] += g[i];
                ds[i] += g[i] * (x[i] - mean) * rstd;
            }
        });
        (dx, dt, ds)
    }

    fn gated(&self, x: &[f32], h: &[f32], gate: &[f32]) -> Vec<f32> {
        let d = self.d;
        self.map_rows(|y, row, b| {
            let (x, h, gate) = (&x[row * d..], &h[row * d..], &gate[b * d..]);
            for i in 0..d {
                y[i] = x[i] + h[i] * gate[i];
            }
        })
    }

    /// Gradients of [`gated_residual`] in `h` `[B, L, D]` and `gate` `[B, D]`.
    fn gated_backward(&self, h: &[f32], gate: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let d = self.d;
        let dh = self.map_rows(|dh, row, b| {
            let (g, gate) = (&g[row * d..], &gate[b * d..]);
            for i in 0..d {
                dh[i] = g[i] * gate[i];
            }
        });
        let [d_gate] = self.per_sample_sums(|row, [sum]| {
            let (g, h) = (&g[row * d..], &h[row * d..]);
            for i in 0..d {
                sum[i] += g[i] * h[i];
            }
        });
        (dh, d_gate)
    }
}

type AD = Autodiff<Flex>;

fn autodiff_modulate(
    x: Tensor<AD, 3>,
    shift: Tensor<AD, 3>,
    scale: Tensor<AD, 3>,
    eps: f64,
    rows: Rows,
) -> Tensor<AD, 3> {
    let [(x, xi), (shift, ti), (scale, si)] = [x, shift, scale].map(split);
    let y = rows.tensor(
        rows.modulate(values(&xi), values(&ti), values(&si), eps),
        rows.l,
    );
    let state = || ModulateState {
        x: xi,
        scale: si,
        eps,
        rows,
    };
    record(ModulateBackward, [x, shift, scale], y, state)
}

/// What the backward of [`modulate`] keeps: the contiguous input and scale.
#[derive(Clone, Debug)]
struct ModulateState {
    x: FlexTensor,
    scale: FlexTensor,
    eps: f64,
    rows: Rows,
}

#[derive(Debug)]
struct ModulateBackward;

impl Backward<Flex, 3> for ModulateBackward {
    type State = ModulateState;

    fn backward(self, ops: Ops<ModulateState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let ModulateState {
            x,
            scale,
            eps,
            rows,
        } = &ops.state;
        let (dx, dt, ds) = rows.modulate_backward(values(x), values(scale), values(&g), *eps);
        let by_input = [
            rows.tensor(dx, rows.l),
            rows.tensor(dt, 1),
            rows.tensor(ds, 1),
        ];
        register(&ops, grads, by_input);
    }
}

fn autodiff_gated(
    x: Tensor<AD, 3>,
    h: Tensor<AD, 3>,
    gate: Tensor<AD, 3>,
    rows: Rows,
) -> Tensor<AD, 3> {
    let [(x, xi), (h, hi), (gate, gi)] = [x, h, gate].map(split);
    let y = rows.tensor(rows.gated(values(&xi), values(&hi), values(&gi)), rows.l);
    record(GatedBackward, [x, h, gate], y, || GatedState {
        h: hi,
        gate: gi,
        rows,
    })
}

/// What the backward of [`gated_residual`] keeps: the contiguous branch and gate.
#[derive(Clone, Debug)]
struct GatedState {
    h: FlexTensor,
    gate: FlexTensor,
    rows: Rows,
}

#[derive(Debug)]
struct GatedBackward;

impl Backward<Flex, 3> for GatedBackward {
    type State = GatedState;

    fn backward(self, ops: Ops<GatedState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let GatedState { h, gate, rows } = &ops.state;
        let (dh, d_gate) = rows.gated_backward(values(h), values(gate), values(&g));
        let by_input = [g, rows.tensor(dh, rows.l), rows.tensor(d_gate, 1)];
        register(&ops, grads, by_input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DefaultBackend;
    use burn::tensor::Tolerance;

    type AD = Autodiff<DefaultBackend>;

    fn tensor(shape: [usize; 3], seed: usize) -> Tensor<AD, 3> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i + seed) * 7919 % 1009) as f32 / 1009.0 - 0.5) * 3.0)
            .collect();
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    type Op<B> = fn([Tensor<B, 3>; 4]) -> Tensor<B, 3>;

    /// Value and the gradients of all three inputs equal the tensor-operation forms, with and
    /// without autodiff; the vectors come from a chunk of a `[B, 6, D]` tensor (strided views,
    /// as in the block).
    fn check(fused: Op<AD>, plain: Op<AD>, inner: Op<DefaultBackend>) {
        let (x, h, table) = (
            tensor([2, 5, 8], 0),
            tensor([2, 5, 8], 3),
            tensor([2, 6, 8], 11),
        );
        let w = tensor([2, 5, 8], 5);
        let run = |f: Op<AD>| {
            let [x, h, table] = [&x, &h, &table].map(|t| t.clone().require_grad());
            let m = table.clone().chunk(6, 1);
            let y = f([x.clone(), h.clone(), m[1].clone(), m[4].clone()]);
            let grads = (y.clone() * w.clone()).sum().backward();
            let grad = |t: &Tensor<AD, 3>| t.grad(&grads).unwrap().into_data();
            (y.inner().into_data(), [grad(&x), grad(&h), grad(&table)])
        };
        let ((y, grads), (want_y, want_grads)) = (run(fused), run(plain));
        y.assert_approx_eq::<f32>(&want_y, Tolerance::absolute(1e-5));
        for (g, want) in grads.iter().zip(&want_grads) {
            g.assert_approx_eq::<f32>(want, Tolerance::absolute(1e-4));
        }
        let m = table.inner().chunk(6, 1);
        inner([x.inner(), h.inner(), m[1].clone(), m[4].clone()])
            .into_data()
            .assert_approx_eq::<f32>(&want_y, Tolerance::absolute(1e-5));
    }

    #[test]
    fn modulate_equals_the_tensor_operations() {
        // h takes no part: its gradient is zero on both sides
        check(
            |[x, h, t, s]| modulate(x, t, s, 1e-6) + h * 0.0,
            |[x, h, t, s]| modulate_ops(x, t, s, 1e-6) + h * 0.0,
            |[x, _, t, s]| modulate(x, t, s, 1e-6),
        );
    }

    #[test]
    fn gated_residual_equals_the_tensor_operations() {
        check(
            |[x, h, g, s]| gated_residual(x, h, g) + s * 0.0,
            |[x, h, g, s]| x + h * g + s * 0.0,
            |[x, h, g, _]| gated_residual(x, h, g),
        );
    }

    /// One row by hand: (1, 3) has mean 2 and std 1, so LN gives (-1, 1); with scale (1, 0) and
    /// shift (0, 5) the modulation is (-2, 6).
    #[test]
    fn modulate_by_hand() {
        let dev = Default::default();
        let x = Tensor::<DefaultBackend, 3>::from_data([[[1.0f32, 3.0]]], &dev);
        let shift = Tensor::from_data([[[0.0f32, 5.0]]], &dev);
        let scale = Tensor::from_data([[[1.0f32, 0.0]]], &dev);
        modulate(x, shift, scale, 0.0)
            .into_data()
            .assert_approx_eq::<f32>(
                &TensorData::from([[[-2.0f32, 6.0]]]),
                Tolerance::absolute(1e-6),
            );
    }
}
