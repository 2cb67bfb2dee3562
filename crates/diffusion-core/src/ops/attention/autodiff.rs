//! Attention as one autodiff node for any inner backend, with whole-tensor operations in the
//! `[B, H, L, Dh]` layout (module docs of [`super`]).

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
