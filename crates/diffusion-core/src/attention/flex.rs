//! Attention on the CPU backend: the kernels of [`super::cpu`] on `Flex`, and as one autodiff
//! node under `Autodiff<Flex>`.

use std::sync::Arc;

use burn::{
    backend::Autodiff,
    tensor::{Tensor, TensorPrimitive},
};
use burn_autodiff::{
    checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn_flex::FlexTensor;

use super::cpu::{self, Dims};
use crate::{backend::Flex, cpu_math::values};

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
    let [q, k, v] = [q, k, v].map(|t| t.into_primitive().tensor().to_contiguous());
    let (out, _) = cpu::forward(values(&q), values(&k), values(&v), d);
    Tensor::from_primitive(TensorPrimitive::Float(cpu::tensor(
        out,
        [d.b, d.l, d.h, d.dh],
    )))
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
    let [q, k, v] = [q, k, v].map(|t| t.into_primitive().tensor());
    let [qi, ki, vi] = [&q, &k, &v].map(|t| t.primitive.to_contiguous());
    let (out, lse) = cpu::forward(values(&qi), values(&ki), values(&vi), d);
    let out = cpu::tensor(out, [d.b, d.l, d.h, d.dh]);
    let prep = FlexAttentionBackward
        .prepare::<NoCheckpointing>([q.node, k.node, v.node])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                q: qi,
                k: ki,
                v: vi,
                out: out.clone(),
                lse: Arc::new(lse),
                dims: d,
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
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
        let d_out = grads.consume::<Flex>(&ops.node).to_contiguous();
        let Saved {
            q,
            k,
            v,
            out,
            lse,
            dims: d,
        } = ops.state;
        let inputs = [
            values(&q),
            values(&k),
            values(&v),
            values(&out),
            &lse,
            values(&d_out),
        ];
        let (dq, dk, dv) = cpu::backward(inputs, d);
        let by_input = [(dq, d.l), (dk, d.s), (dv, d.s)];
        for (node, (grad, n)) in ops.parents.into_iter().zip(by_input) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, cpu::tensor(grad, [d.b, n, d.h, d.dh]));
            }
        }
    }
}
