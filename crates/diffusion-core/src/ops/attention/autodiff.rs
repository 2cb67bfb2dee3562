//! Attention as one autodiff node for any inner backend (module docs of [`super`]): the
//! forward and backward of [`super::recompute`], over chunks of queries sized by
//! [`super::recompute::query_chunk`], so no `[B, H, L, S]` score matrix is ever materialised.

use super::recompute;
use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, module, ops::AttentionModuleOptions, Tensor, TensorPrimitive},
};
use burn_autodiff::{
    checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};

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
    let prep = AttentionBackward
        .prepare::<NoCheckpointing>([q.node, k.node, v.node])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let [b, h, _, _] = qi.dims();
            let chunk = recompute::query_chunk(b, h, ki.dims()[2]);
            let [ql, kl, vl] = [qi, ki, vi].map(heads_last);
            let (out, lse) = recompute::forward(ql.clone(), kl.clone(), vl.clone(), chunk);
            let saved = Saved {
                q: ql,
                k: kl,
                v: vl,
                out: out.clone(),
                lse,
                chunk,
            };
            prep.finish(saved, heads_last(out).into_primitive().tensor())
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

/// `[B, H, L, Dh]` <-> `[B, L, H, Dh]` (a view).
fn heads_last<I: Backend>(t: Tensor<I, 4>) -> Tensor<I, 4> {
    t.swap_dims(1, 2)
}

/// What the backward of [`autodiff_attention`] keeps: inputs, output (`[B, L, H, Dh]` views),
/// row log-sum-exp `[B, H, L]`, and the query chunk.
#[derive(Clone, Debug)]
struct Saved<I: Backend> {
    q: Tensor<I, 4>,
    k: Tensor<I, 4>,
    v: Tensor<I, 4>,
    out: Tensor<I, 4>,
    lse: Tensor<I, 3>,
    chunk: usize,
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
            chunk,
        } = ops.state;
        let (dq, dk, dv) = recompute::backward([q, k, v, out], lse, heads_last(d_out), chunk);
        for (node, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = node {
                grads.register::<I>(node.id, heads_last(grad).into_primitive().tensor());
            }
        }
    }
}
