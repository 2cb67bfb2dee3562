//! Activation checkpointing of a Wan block (Chen et al. 2016, "Training Deep Nets with Sublinear
//! Memory Cost", arXiv 1604.06174): under autodiff a checkpointed block is one autodiff node that
//! keeps only its input `x` `[B, L, D]` (the text and modulation it shares with every block).
//! Its backward runs the block's forward again on the inner backend, keeping this one block's
//! activations, and then the block's backward, derived by hand below; parameter gradients go
//! straight into the gradients container under each parameter's node.
//!
//! burn 0.21 cannot run an autodiff backward inside another one (the nested backward's clean-up
//! locks the graph the outer backward holds), so the recomputed block cannot be differentiated
//! by autodiff; the backward of every operation of the block is written out here instead:
//!
//! ```text
//! linear (LoRA):  y = x W + b + s (x A) B    dx = dy Wᵀ + s (dy Bᵀ) Aᵀ   dW = xᵀ dy   db = Σ dy
//!                                            dA = s xᵀ (dy Bᵀ)           dB = s (x A)ᵀ dy
//! layer norm:     n = (x - μ) r, r = (σ² + ε)^-½    dx = r (dn - mean(dn) - n mean(dn ∘ n))
//! RMS norm:       y = x r γ, r = (mean(x²) + ε)^-½  dx = r (dn - n mean(dn ∘ n)), dn = dy γ
//! rotary:         the inverse rotation of the gradient
//! attention:      FlashAttention's backward from the row log-sum-exp, in chunks of queries
//! GELU-tanh, gated residuals, adaLN modulation: elementwise
//! ```
//!
//! Gradients agree with the non-checkpointed block to f32 round-off (tested on every backend the
//! tests are built for). The self-attention's forward and backward run over chunks of
//! [`recompute::query_chunk`] queries, so the recomputed block never holds the full
//! `[B, H, L, L]` scores, and the feed-forward's over chunks of [`ffn_chunk`] tokens, so its
//! `[B, L, ffn_dim]` hidden never lives whole.

use burn::{
    backend::Autodiff,
    module::{AutodiffModule, Module, ModuleVisitor, Param},
    nn::LayerNorm,
    tensor::{backend::Backend, ops::FloatTensor, Tensor, TensorPrimitive},
};
use burn_autodiff::{
    checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    NodeId,
};

use super::{RopeTable, WanAttention, WanBlock};
use crate::ops::{
    activation::{gelu_tanh, gelu_tanh_derivative},
    attention::recompute,
    dispatch::{cast, is},
    lora::LoraLinear,
    rotary::rotate,
};
use crate::train::precision::to_dtype;

/// `block.forward(x, text, modulation, rope)` as one autodiff node that keeps only its inputs
/// (module docs) on the built-in autodiff backends; other backends run the block as it is.
///
/// # Shapes
/// - `x`: `[B, L, D]`, `text`: `[B, S, D]`, `modulation`: `[B, 6, D]` -> `[B, L, D]`
pub fn checkpointed<B: Backend>(
    block: &WanBlock<B>,
    x: Tensor<B, 3>,
    text: Tensor<B, 3>,
    modulation: Tensor<B, 3>,
    rope: &RopeTable<B>,
    ffn_chunk: Option<usize>,
) -> Tensor<B, 3> {
    macro_rules! on {
        ($inner:ty) => {
            if is::<B, Autodiff<$inner>>() {
                let rope = RopeTable::<Autodiff<$inner>> {
                    cos: cast(rope.cos.clone()),
                    sin: cast(rope.sin.clone()),
                };
                return cast(node::<$inner>(
                    cast(block.clone()),
                    cast(x),
                    cast(text),
                    cast(modulation),
                    rope,
                    ffn_chunk,
                ));
            }
        };
    }
    on!(crate::backend::Flex);
    #[cfg(feature = "wgpu")]
    on!(crate::backend::Wgpu);
    #[cfg(feature = "cuda")]
    on!(crate::backend::Cuda);
    #[cfg(feature = "ndarray")]
    on!(crate::backend::NdArray);
    block.forward(x, text, modulation, rope)
}

/// Whether the block can be checkpointed: LoRA dropout draws masks the recomputation would not
/// replay.
pub(crate) fn supported<B: Backend>(block: &WanBlock<B>) -> bool {
    [
        &block.attn1.to_q,
        &block.attn1.to_k,
        &block.attn1.to_v,
        &block.attn1.to_out,
        &block.attn2.to_q,
        &block.attn2.to_k,
        &block.attn2.to_v,
        &block.attn2.to_out,
        &block.ffn_in,
        &block.ffn_out,
    ]
    .iter()
    .all(|l| !l.has_dropout())
}

/// The node of a trainable parameter, `None` for a frozen one.
fn node_of<I: Backend, const D: usize>(p: &Param<Tensor<Autodiff<I>, D>>) -> Option<NodeId> {
    let t = p.val().into_primitive().tensor();
    (!t.node.requirement.is_none()).then_some(t.node.id)
}

/// The first trainable parameter of a module.
struct FirstTrainable<I: Backend>(Option<FloatTensor<Autodiff<I>>>);

impl<I: Backend> ModuleVisitor<Autodiff<I>> for FirstTrainable<I> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Autodiff<I>, D>>) {
        if self.0.is_none() {
            let t = param.val().into_primitive().tensor();
            if !t.node.requirement.is_none() {
                self.0 = Some(t);
            }
        }
    }
}

/// The nodes of a linear layer's trainable parameters.
#[derive(Debug, Clone)]
struct LinearNodes {
    weight: Option<NodeId>,
    bias: Option<NodeId>,
    down: Option<NodeId>,
    up: Option<NodeId>,
}

impl LinearNodes {
    fn of<I: Backend>(l: &LoraLinear<Autodiff<I>>) -> Self {
        let adapter = l.active_adapter();
        Self {
            weight: node_of(&l.base.weight),
            bias: l.base.bias.as_ref().and_then(node_of),
            down: adapter.and_then(|a| node_of(&a.down)),
            up: adapter.and_then(|a| node_of(&a.up)),
        }
    }
}

/// The nodes of an attention's trainable parameters.
#[derive(Debug, Clone)]
struct AttentionNodes {
    q: LinearNodes,
    k: LinearNodes,
    v: LinearNodes,
    out: LinearNodes,
    norm_q: Option<NodeId>,
    norm_k: Option<NodeId>,
}

impl AttentionNodes {
    fn of<I: Backend>(a: &WanAttention<Autodiff<I>>) -> Self {
        Self {
            q: LinearNodes::of(&a.to_q),
            k: LinearNodes::of(&a.to_k),
            v: LinearNodes::of(&a.to_v),
            out: LinearNodes::of(&a.to_out),
            norm_q: node_of(&a.norm_q.gamma),
            norm_k: node_of(&a.norm_k.gamma),
        }
    }
}

/// The nodes of a block's trainable parameters.
#[derive(Debug, Clone)]
struct BlockNodes {
    attn1: AttentionNodes,
    attn2: AttentionNodes,
    /// `gamma`, `beta` of the cross-attention norm.
    norm2: [Option<NodeId>; 2],
    ffn_in: LinearNodes,
    ffn_out: LinearNodes,
    table: Option<NodeId>,
}

impl BlockNodes {
    fn of<I: Backend>(block: &WanBlock<Autodiff<I>>) -> Self {
        let norm2 = block.norm2.as_ref();
        Self {
            attn1: AttentionNodes::of(&block.attn1),
            attn2: AttentionNodes::of(&block.attn2),
            norm2: [
                norm2.and_then(|n| node_of(&n.gamma)),
                norm2.and_then(|n| n.beta.as_ref().and_then(node_of)),
            ],
            ffn_in: LinearNodes::of(&block.ffn_in),
            ffn_out: LinearNodes::of(&block.ffn_out),
            table: node_of(&block.scale_shift_table),
        }
    }
}

/// What the node keeps: the block on the inner backend (its parameters, shared with the
/// model), its inputs, and the nodes of its trainable parameters.
#[derive(Debug, Clone)]
struct Saved<I: Backend> {
    block: WanBlock<I>,
    nodes: BlockNodes,
    x: Tensor<I, 3>,
    text: Tensor<I, 3>,
    modulation: Tensor<I, 3>,
    rope: RopeTable<I>,
    ffn_chunk: usize,
}

#[derive(Debug)]
struct BlockBackward;

/// Feed-forward hidden values a recomputed block holds at once (64 MiB in f32): the default
/// chunk of tokens is this over `batch x ffn_dim`.
pub const FFN_CHUNK_VALUES: usize = 1 << 24;

/// Tokens per chunk of a recomputed block's feed-forward: `chunk`, or [`FFN_CHUNK_VALUES`] over
/// `batch x ffn_dim` (at least 64), never more than the tokens.
pub fn ffn_chunk(chunk: Option<usize>, batch: usize, tokens: usize, ffn_dim: usize) -> usize {
    let auto = || (FFN_CHUNK_VALUES / (batch * ffn_dim).max(1)).max(64);
    chunk.unwrap_or_else(auto).clamp(1, tokens.max(1))
}

fn node<I: Backend>(
    block: WanBlock<Autodiff<I>>,
    x: Tensor<Autodiff<I>, 3>,
    text: Tensor<Autodiff<I>, 3>,
    modulation: Tensor<Autodiff<I>, 3>,
    rope: RopeTable<Autodiff<I>>,
    ffn_chunk: Option<usize>,
) -> Tensor<Autodiff<I>, 3> {
    let nodes = BlockNodes::of(&block);
    let [b, l, _] = x.dims();
    let ffn_chunk = self::ffn_chunk(ffn_chunk, b, l, block.ffn_in.base.weight.dims()[1]);
    let [x, text, modulation] = [x, text, modulation].map(|t| t.into_primitive().tensor());
    // The parameters are not parents of the node (their gradients are registered under their
    // own nodes); a trainable one is a fourth parent so that the node is tracked whenever the
    // block trains, even when none of its inputs is tracked.
    let mut first = FirstTrainable(None);
    block.visit(&mut first);
    let anchor = first.0.map_or_else(|| x.node.clone(), |t| t.node);
    let wrap = |p: &I::FloatTensorPrimitive| {
        Tensor::<I, 3>::from_primitive(TensorPrimitive::Float(p.clone()))
    };
    let (xi, ti, mi) = (
        wrap(&x.primitive),
        wrap(&text.primitive),
        wrap(&modulation.primitive),
    );
    let block = block.valid();
    let rope = RopeTable {
        cos: rope.cos.inner(),
        sin: rope.sin.inner(),
    };
    let out = block.forward(xi.clone(), ti.clone(), mi.clone(), &rope);
    let prep = BlockBackward
        .prepare::<NoCheckpointing>([x.node, text.node, modulation.node, anchor])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                block,
                nodes,
                x: xi,
                text: ti,
                modulation: mi,
                rope,
                ffn_chunk,
            };
            prep.finish(saved, out.into_primitive().tensor())
        }
        OpsKind::UnTracked(prep) => prep.finish(out.into_primitive().tensor()),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Registers `grad()` under `node` when the parameter trains.
fn put<I: Backend, const D: usize>(
    grads: &mut Gradients,
    node: Option<NodeId>,
    grad: impl FnOnce() -> Tensor<I, D>,
) {
    if let Some(id) = node {
        grads.register::<I>(id, grad().into_primitive().tensor());
    }
}

/// The input gradient of a linear layer (with its adapter) over rows; registers the gradients
/// of its trainable parameters.
///
/// # Shapes
/// - `x`: `[N, in]`, `dy`: `[N, out]` -> `[N, in]`
fn linear_backward<I: Backend>(
    layer: &LoraLinear<I>,
    nodes: &LinearNodes,
    x: Tensor<I, 2>,
    dy: Tensor<I, 2>,
    grads: &mut Gradients,
) -> Tensor<I, 2> {
    let d_out = dy.dims()[1];
    put(grads, nodes.weight, || {
        x.clone().transpose().matmul(dy.clone())
    });
    put(grads, nodes.bias, || dy.clone().sum_dim(0).reshape([d_out]));
    let dx = dy.clone().matmul(layer.base.weight.val().transpose());
    match layer.active_adapter() {
        None => dx,
        Some(adapter) => {
            // in the activations' dtype, as the forward; the gradients in the adapter's
            let (dtype, own) = (dx.dtype(), adapter.dtype());
            let [down, up] = [&adapter.down, &adapter.up].map(|p| to_dtype(p.val(), dtype));
            let s = adapter.scale();
            // [N, rank]
            let dy_up = dy.clone().matmul(up.transpose()).mul_scalar(s);
            put(grads, nodes.up, || {
                let g = x.clone().matmul(down.clone()).transpose().matmul(dy);
                to_dtype(g.mul_scalar(s), own)
            });
            put(grads, nodes.down, || {
                to_dtype(x.transpose().matmul(dy_up.clone()), own)
            });
            dx + dy_up.matmul(down.transpose())
        }
    }
}

/// `n = (x - mean) r` and `r = (var + eps)^-1/2` over the last axis (`r` keeps it as 1).
fn layer_norm_stats<I: Backend, const D: usize>(
    x: Tensor<I, D>,
    eps: f64,
) -> (Tensor<I, D>, Tensor<I, D>) {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    let r = var.add_scalar(eps).sqrt().recip();
    ((x - mean) * r.clone(), r)
}

/// `dx = r (dn - mean(dn) - n mean(dn ∘ n))`, the input gradient of a layer norm from the
/// gradient of its normalised output.
fn layer_norm_backward<I: Backend, const D: usize>(
    n: Tensor<I, D>,
    r: Tensor<I, D>,
    dn: Tensor<I, D>,
) -> Tensor<I, D> {
    let mean_dn = dn.clone().mean_dim(D - 1);
    let mean_dn_n = (dn.clone() * n.clone()).mean_dim(D - 1);
    (dn - mean_dn - n * mean_dn_n) * r
}

/// `n = x r` and `r = (mean(x²) + eps)^-1/2` over the last axis.
fn rms_stats<I: Backend>(x: Tensor<I, 2>, eps: f64) -> (Tensor<I, 2>, Tensor<I, 2>) {
    let r = x
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    (x * r.clone(), r)
}

/// One attention's recomputed activations.
struct AttentionActs<I: Backend> {
    /// Rows of the query input `[B L, D]` and of the context `[B S, D]`.
    x: Tensor<I, 2>,
    context: Tensor<I, 2>,
    /// Normalised queries and keys before the norm's gain, rows, with their `r`.
    q_norm: (Tensor<I, 2>, Tensor<I, 2>),
    k_norm: (Tensor<I, 2>, Tensor<I, 2>),
    /// Attention inputs and output `[B, L, H, Dh]`, `[B, S, H, Dh]` and row log-sum-exp
    /// `[B, H, L]`.
    q: Tensor<I, 4>,
    k: Tensor<I, 4>,
    v: Tensor<I, 4>,
    out: Tensor<I, 4>,
    lse: Tensor<I, 3>,
    /// The attention output as rows `[B L, D]` (the output projection's input).
    out_rows: Tensor<I, 2>,
}

/// Attention forward keeping what its backward needs.
///
/// # Shapes
/// - `x`: `[B, L, D]`, `context`: `[B, S, D]` -> `[B, L, D]`
fn attention_forward<I: Backend>(
    a: &WanAttention<I>,
    x: Tensor<I, 3>,
    context: Tensor<I, 3>,
    rope: Option<&RopeTable<I>>,
    eps: f64,
) -> (Tensor<I, 3>, AttentionActs<I>) {
    let [b, l, d] = x.dims();
    let s = context.dims()[1];
    let h = a.heads();
    let x = x.reshape([b * l, d]);
    let context = context.reshape([b * s, d]);
    let q_norm = rms_stats(a.to_q.forward(x.clone()), eps);
    let k_norm = rms_stats(a.to_k.forward(context.clone()), eps);
    let gain = |g: &Param<Tensor<I, 1>>| g.val().unsqueeze_dim::<2>(0);
    let heads = |t: Tensor<I, 2>, n: usize, rotate: bool| -> Tensor<I, 4> {
        let t = t.reshape([b, n, h, d / h]);
        match (rope, rotate) {
            (Some(rope), true) => rope.apply(t),
            _ => t,
        }
    };
    let q = heads(q_norm.0.clone() * gain(&a.norm_q.gamma), l, true);
    let k = heads(k_norm.0.clone() * gain(&a.norm_k.gamma), s, true);
    let v = heads(a.to_v.forward(context.clone()), s, false);
    let (out, lse) = recompute::forward(
        q.clone(),
        k.clone(),
        v.clone(),
        recompute::query_chunk(b, h, s),
    );
    let out_rows = out.clone().reshape([b * l, d]);
    let y = a.to_out.forward(out_rows.clone()).reshape([b, l, d]);
    let acts = AttentionActs {
        x,
        context,
        q_norm,
        k_norm,
        q,
        k,
        v,
        out,
        lse,
        out_rows,
    };
    (y, acts)
}

/// The gradients of an attention's query input and context from that of its output.
///
/// # Shapes
/// - `dy`: `[B, L, D]` -> (`[B, L, D]`, `[B, S, D]`)
fn attention_backward<I: Backend>(
    a: &WanAttention<I>,
    nodes: &AttentionNodes,
    acts: AttentionActs<I>,
    rope: Option<&RopeTable<I>>,
    dy: Tensor<I, 3>,
    grads: &mut Gradients,
) -> (Tensor<I, 3>, Tensor<I, 3>) {
    let [b, l, d] = dy.dims();
    let s = acts.k.dims()[1];
    let h = a.heads();
    let d_out_rows = linear_backward(
        &a.to_out,
        &nodes.out,
        acts.out_rows,
        dy.reshape([b * l, d]),
        grads,
    );
    let d_out = d_out_rows.reshape([b, l, h, d / h]);
    let inputs = [acts.q, acts.k, acts.v, acts.out];
    let (dq, dk, dv) =
        recompute::backward(inputs, acts.lse, d_out, recompute::query_chunk(b, h, s));
    let rows = |t: Tensor<I, 4>, n: usize, rotated: bool| -> Tensor<I, 2> {
        let t = match (rope, rotated) {
            // the inverse rotation: the tables' sine negated
            (Some(rope), true) => rotate(t, &rope.cos, &rope.sin.clone().neg()),
            _ => t,
        };
        t.reshape([b * n, d])
    };
    // through the RMS norm: dn = dq γ, dγ = Σ dq ∘ n, dx = r (dn - n mean(dn ∘ n))
    let norm_backward = |dt: Tensor<I, 2>,
                         (n, r): (Tensor<I, 2>, Tensor<I, 2>),
                         gamma: &Param<Tensor<I, 1>>,
                         node: Option<NodeId>,
                         grads: &mut Gradients| {
        put(grads, node, || {
            (dt.clone() * n.clone()).sum_dim(0).reshape([d])
        });
        let dn = dt * gamma.val().unsqueeze_dim::<2>(0);
        let mean = (dn.clone() * n.clone()).mean_dim(1);
        (dn - n * mean) * r
    };
    let dq = norm_backward(
        rows(dq, l, true),
        acts.q_norm,
        &a.norm_q.gamma,
        nodes.norm_q,
        grads,
    );
    let dk = norm_backward(
        rows(dk, s, true),
        acts.k_norm,
        &a.norm_k.gamma,
        nodes.norm_k,
        grads,
    );
    let dx = linear_backward(&a.to_q, &nodes.q, acts.x, dq, grads);
    let dc = linear_backward(&a.to_k, &nodes.k, acts.context.clone(), dk, grads)
        + linear_backward(&a.to_v, &nodes.v, acts.context, rows(dv, s, false), grads);
    (dx.reshape([b, l, d]), dc.reshape([b, s, d]))
}

impl<I: Backend> Backward<I, 4> for BlockBackward {
    type State = Saved<I>;

    fn backward(self, ops: Ops<Saved<I>, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy =
            Tensor::<I, 3>::from_primitive(TensorPrimitive::Float(grads.consume::<I>(&ops.node)));
        let Saved {
            block,
            nodes,
            x,
            text,
            modulation,
            rope,
            ffn_chunk,
        } = ops.state;
        let eps = block.eps();
        let [b, l, d] = x.dims();
        // six [B, 1, D] vectors: shift, scale, gate of attention, then of the feed-forward
        let m = (block.scale_shift_table.val() + modulation).chunk(6, 1);
        let one_plus = |t: &Tensor<I, 3>| t.clone().add_scalar(1.0);

        // the forward again, keeping this block's activations
        let (n1, r1) = layer_norm_stats(x.clone(), eps);
        let h1 = n1.clone() * one_plus(&m[1]) + m[0].clone();
        let (a1, acts1) = attention_forward(&block.attn1, h1.clone(), h1, Some(&rope), eps);
        let x1 = x + a1.clone() * m[2].clone();
        let (h2, norm2) = match &block.norm2 {
            Some(norm) => {
                let (n2, r2) = layer_norm_stats(x1.clone(), eps);
                (affine(norm, n2.clone()), Some((n2, r2)))
            }
            None => (x1.clone(), None),
        };
        let (a2, acts2) = attention_forward(&block.attn2, h2, text, None, eps);
        let (n3, r3) = layer_norm_stats(x1 + a2, eps);
        let h3 = n3.clone() * one_plus(&m[4]) + m[3].clone();

        // and back: the feed-forward over chunks of tokens (its hidden is the widest tensor)
        let sum_tokens = |t: Tensor<I, 3>| t.sum_dim(1);
        let mut d_gate_ff = m[5].zeros_like();
        let mut dh3 = Vec::new();
        for start in (0..l).step_by(ffn_chunk) {
            let n = ffn_chunk.min(l - start);
            let rows = |t: &Tensor<I, 3>| t.clone().narrow(1, start, n).reshape([b * n, d]);
            let (h, g) = (rows(&h3), rows(&dy));
            let u = block.ffn_in.forward(h.clone());
            let act = gelu_tanh(u.clone());
            let f = block.ffn_out.forward(act.clone());
            d_gate_ff = d_gate_ff + sum_tokens((g.clone() * f).reshape([b, n, d]));
            let g = (g.reshape([b, n, d]) * m[5].clone()).reshape([b * n, d]);
            let d_act = linear_backward(&block.ffn_out, &nodes.ffn_out, act, g, grads);
            let du = d_act * gelu_tanh_derivative(u);
            let dh = linear_backward(&block.ffn_in, &nodes.ffn_in, h, du, grads);
            dh3.push(dh.reshape([b, n, d]));
        }
        let dh3 = Tensor::cat(dh3, 1);
        let d_shift_ff = sum_tokens(dh3.clone());
        let d_scale_ff = sum_tokens(dh3.clone() * n3.clone());
        let dx2 = dy + layer_norm_backward(n3, r3, dh3 * one_plus(&m[4]));

        let (dh2, d_text) =
            attention_backward(&block.attn2, &nodes.attn2, acts2, None, dx2.clone(), grads);
        let dx1 = dx2
            + match (&block.norm2, norm2) {
                (Some(norm), Some((n2, r2))) => {
                    let [gamma, beta] = nodes.norm2;
                    let sum_rows = |t: Tensor<I, 3>| t.sum_dim(0).sum_dim(1).reshape([d]);
                    put(grads, gamma, || sum_rows(dh2.clone() * n2.clone()));
                    put(grads, beta, || sum_rows(dh2.clone()));
                    let gain = norm.gamma.val().unsqueeze_dim::<2>(0).unsqueeze_dim::<3>(0);
                    layer_norm_backward(n2, r2, dh2 * gain)
                }
                _ => dh2,
            };

        let d_gate = sum_tokens(dx1.clone() * a1);
        let (dq_in, dkv_in) = attention_backward(
            &block.attn1,
            &nodes.attn1,
            acts1,
            Some(&rope),
            dx1.clone() * m[2].clone(),
            grads,
        );
        let dh1 = dq_in + dkv_in;
        let d_shift = sum_tokens(dh1.clone());
        let d_scale = sum_tokens(dh1.clone() * n1.clone());
        let dx = dx1 + layer_norm_backward(n1, r1, dh1 * one_plus(&m[1]));

        // [B, 6, D]
        let dm = Tensor::cat(
            vec![d_shift, d_scale, d_gate, d_shift_ff, d_scale_ff, d_gate_ff],
            1,
        );
        put(grads, nodes.table, || dm.clone().sum_dim(0));
        let [node_x, node_text, node_m, _] = ops.parents;
        for (node, grad) in [(node_x, dx), (node_text, d_text), (node_m, dm)] {
            if let Some(node) = node {
                grads.register::<I>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// `n γ + β` of an affine layer norm, from the normalised input.
fn affine<I: Backend>(norm: &LayerNorm<I>, n: Tensor<I, 3>) -> Tensor<I, 3> {
    let y = n * norm.gamma.val().unsqueeze_dim::<2>(0).unsqueeze_dim::<3>(0);
    match &norm.beta {
        Some(beta) => y + beta.val().unsqueeze_dim::<2>(0).unsqueeze_dim::<3>(0),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DefaultBackend;
    use burn::tensor::Tolerance;

    type I = DefaultBackend;

    #[test]
    fn gelu_derivative_matches_autodiff() {
        type AD = Autodiff<I>;
        let x = Tensor::<AD, 1>::from_floats(
            [-3.0, -1.0, -0.2, 0.0, 0.5, 2.0, 4.0],
            &Default::default(),
        )
        .require_grad();
        let grads = gelu_tanh(x.clone()).sum().backward();
        gelu_tanh_derivative(x.clone().inner())
            .into_data()
            .assert_approx_eq::<f32>(
                &x.grad(&grads).unwrap().into_data(),
                Tolerance::absolute(1e-5),
            );
    }
}
