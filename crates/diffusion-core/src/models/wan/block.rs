use burn::{
    module::{Module, Param},
    nn::{LayerNorm, LayerNormConfig, LinearConfig},
    tensor::{backend::Backend, Distribution, Tensor},
};

use super::{RopeTable, WanAttention};
use crate::{
    ops::activation::gelu_tanh,
    ops::lora::LoraLinear,
    ops::modulation::{gated_residual, modulate},
};

/// One Wan transformer block: adaLN-modulated self-attention with 3D RoPE, cross-attention to
/// the text, adaLN-modulated GELU-tanh feed-forward, each gated (`WanTransformerBlock`).
#[derive(Module, Debug)]
pub struct WanBlock<B: Backend> {
    /// Self-attention (`attn1`).
    pub attn1: WanAttention<B>,
    /// Cross-attention to the text (`attn2`).
    pub attn2: WanAttention<B>,
    /// Affine layer norm before cross-attention (`norm2`), when `cross_attn_norm`.
    pub norm2: Option<LayerNorm<B>>,
    /// Feed-forward up projection (`ffn.net.0.proj`).
    pub ffn_in: LoraLinear<B>,
    /// Feed-forward down projection (`ffn.net.2`).
    pub ffn_out: LoraLinear<B>,
    /// Learned offsets of the six modulation vectors, `[1, 6, D]`.
    pub scale_shift_table: Param<Tensor<B, 3>>,
    eps: f64,
}

impl<B: Backend> WanBlock<B> {
    pub(crate) fn new(
        dim: usize,
        ffn_dim: usize,
        heads: usize,
        cross_attn_norm: bool,
        eps: f64,
        device: &B::Device,
    ) -> Self {
        let std = 1.0 / (dim as f64).sqrt();
        Self {
            attn1: WanAttention::new(dim, heads, eps, device),
            attn2: WanAttention::new(dim, heads, eps, device),
            norm2: cross_attn_norm
                .then(|| LayerNormConfig::new(dim).with_epsilon(eps).init(device)),
            ffn_in: LinearConfig::new(dim, ffn_dim).init(device).into(),
            ffn_out: LinearConfig::new(ffn_dim, dim).init(device).into(),
            scale_shift_table: Param::from_tensor(Tensor::random(
                [1, 6, dim],
                Distribution::Normal(0.0, std),
                device,
            )),
            eps,
        }
    }

    /// Epsilon of the block's norms.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// # Shapes
    /// - `x`: `[B, L, D]`, `text`: `[B, S, D]`, `modulation`: `[B, 6, D]` -> `[B, L, D]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        text: Tensor<B, 3>,
        modulation: Tensor<B, 3>,
        rope: &RopeTable<B>,
    ) -> Tensor<B, 3> {
        // six [B, 1, D] vectors: shift, scale, gate of attention, then of the feed-forward
        let m = (self.scale_shift_table.val() + modulation).chunk(6, 1);
        let (shift, scale, gate) = (m[0].clone(), m[1].clone(), m[2].clone());
        let (c_shift, c_scale, c_gate) = (m[3].clone(), m[4].clone(), m[5].clone());

        let h = modulate(x.clone(), shift, scale, self.eps);
        let x = gated_residual(x, self.attn1.forward(h.clone(), h, Some(rope)), gate);

        let h = match &self.norm2 {
            Some(norm) => norm.forward(x.clone()),
            None => x.clone(),
        };
        let x = x + self.attn2.forward(h, text, None);

        let h = modulate(x.clone(), c_shift, c_scale, self.eps);
        let ff = self.ffn_out.forward(gelu_tanh(self.ffn_in.forward(h)));
        gated_residual(x, ff, c_gate)
    }
}
