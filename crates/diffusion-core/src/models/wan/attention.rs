use burn::{
    module::Module,
    nn::{LinearConfig, RmsNorm, RmsNormConfig},
    tensor::{backend::Backend, Tensor},
};

use crate::{ops::attention::attention, ops::lora::LoraLinear};

use super::RopeTable;

/// Wan attention: q/k/v projections, RMS norm on q and k across all heads, optional rotary
/// embedding, scaled dot-product attention, output projection (`WanAttention` in diffusers).
#[derive(Module, Debug)]
pub struct WanAttention<B: Backend> {
    /// Query projection.
    pub to_q: LoraLinear<B>,
    /// Key projection.
    pub to_k: LoraLinear<B>,
    /// Value projection.
    pub to_v: LoraLinear<B>,
    /// Output projection (`to_out.0`).
    pub to_out: LoraLinear<B>,
    /// RMS norm of the queries.
    pub norm_q: RmsNorm<B>,
    /// RMS norm of the keys.
    pub norm_k: RmsNorm<B>,
    heads: usize,
}

impl<B: Backend> WanAttention<B> {
    pub(crate) fn new(dim: usize, heads: usize, eps: f64, device: &B::Device) -> Self {
        let lin = || LinearConfig::new(dim, dim).init(device).into();
        let norm = || RmsNormConfig::new(dim).with_epsilon(eps).init(device);
        Self {
            to_q: lin(),
            to_k: lin(),
            to_v: lin(),
            to_out: lin(),
            norm_q: norm(),
            norm_k: norm(),
            heads,
        }
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Attends from `x` to `context` (self-attention when `context` is `x`).
    ///
    /// # Shapes
    /// - `x`: `[B, L, D]`, `context`: `[B, S, D]` -> `[B, L, D]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        rope: Option<&RopeTable<B>>,
    ) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let s = context.dims()[1];
        let h = self.heads;
        let split = |t: Tensor<B, 3>, n: usize| -> Tensor<B, 4> { t.reshape([b, n, h, d / h]) };
        let mut q = split(self.norm_q.forward(self.to_q.forward(x)), l);
        let mut k = split(self.norm_k.forward(self.to_k.forward(context.clone())), s);
        let v = split(self.to_v.forward(context), s);
        if let Some(rope) = rope {
            q = rope.apply(q);
            k = rope.apply(k);
        }
        let out = attention(q, k, v);
        self.to_out.forward(out.reshape([b, l, d]))
    }
}
