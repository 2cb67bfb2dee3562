//! Attention on the CPU backend: the kernels of [`super::cpu`] on `Flex`, and as one autodiff
//! node under `Autodiff<Flex>`.

use std::sync::Arc;

use burn::{backend::Autodiff, tensor::Tensor};
use burn_autodiff::{
    checkpoint::base::Checkpointer,
    grads::Gradients,
    ops::{Backward, Ops},
};
use burn_flex::FlexTensor;

use super::cpu::{self, Dims};
use crate::{
    backend::Flex,
    ops::cpu_math::values,
    ops::flex_node::{contiguous, output_grad, record, register, split, tensor},
};

/// Attention on `Flex` (no autodiff).
///
/// # Shapes
/// - `q`: `[B, L, H, Dh]`, `k`, `v`: `[B, S, H, Dh]` (f32, sizes `d`) -> `[B, L, H, Dh]`
pub(super) fn attention(
    q: Tensor<Flex, 4>,
    k: Tensor<Flex, 4>,
    v: Tensor<Flex, 4>,
    d: Dims,
) -> Tensor<Flex, 4> {
    let [q, k, v] = [q, k, v].map(contiguous);
    let (out, _) = cpu::forward(values(&q), values(&k), values(&v), d);
    tensor(cpu::tensor(out, [d.b, d.l, d.h, d.dh]))
}

/// Attention under `Autodiff<Flex>` as one node that keeps the inputs, the output and the row
/// log-sum-exp.
///
/// # Shapes
/// - `q`: `[B, L, H, Dh]`, `k`, `v`: `[B, S, H, Dh]` (f32, sizes `d`) -> `[B, L, H, Dh]`
pub(super) fn autodiff_attention(
    q: Tensor<Autodiff<Flex>, 4>,
    k: Tensor<Autodiff<Flex>, 4>,
    v: Tensor<Autodiff<Flex>, 4>,
    d: Dims,
) -> Tensor<Autodiff<Flex>, 4> {
    let [(q, qi), (k, ki), (v, vi)] = [q, k, v].map(split);
    let (out, lse) = cpu::forward(values(&qi), values(&ki), values(&vi), d);
    let out = cpu::tensor(out, [d.b, d.l, d.h, d.dh]);
    let saved = || Saved {
        q: qi,
        k: ki,
        v: vi,
        out: out.clone(),
        lse: Arc::new(lse),
        dims: d,
    };
    record(FlexAttentionBackward, [q, k, v], out.clone(), saved)
}

/// What the backward keeps: contiguous inputs, output, row log-sum-exp `[B, H, L]`.
#[derive(Clone, Debug)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: Arc<Vec<f32>>,
    dims: Dims,
}

#[derive(Debug)]
struct FlexAttentionBackward;

impl Backward<Flex, 3> for FlexAttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = output_grad(&ops, grads);
        let s = &ops.state;
        let inputs = [&s.q, &s.k, &s.v, &s.out].map(values);
        let [q, k, v, out] = inputs;
        let (dq, dk, dv) = cpu::backward([q, k, v, out, &s.lse, values(&d_out)], s.dims);
        let d = s.dims;
        let by_input = [
            cpu::tensor(dq, [d.b, d.l, d.h, d.dh]),
            cpu::tensor(dk, [d.b, d.s, d.h, d.dh]),
            cpu::tensor(dv, [d.b, d.s, d.h, d.dh]),
        ];
        register(&ops, grads, by_input);
    }
}
