//! Query-attention pooling of a token sequence (PRFL's aggregation).

use burn::{
    config::Config,
    module::{Module, Param},
    nn::{
        attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig},
        Initializer,
    },
    tensor::{backend::Backend, Tensor},
};

/// Configuration of a [`QueryPool`].
#[derive(Config, Debug)]
pub struct QueryPoolConfig {
    /// Token width.
    pub dim: usize,
    /// Attention heads (must divide `dim`).
    pub heads: usize,
}

impl QueryPoolConfig {
    /// A pool with a xavier-initialised query.
    pub fn init<B: Backend>(&self, device: &B::Device) -> QueryPool<B> {
        QueryPool {
            query: Initializer::XavierUniform { gain: 1.0 }.init_with(
                [1, 1, self.dim],
                Some(self.dim),
                Some(self.dim),
                device,
            ),
            attention: MultiHeadAttentionConfig::new(self.dim, self.heads)
                .with_dropout(0.0)
                .init(device),
        }
    }
}

/// One learnable query attends over all tokens with multi-head attention; the query is added
/// back as a residual (PRFL "Video Generation Models Are Good Latent Reward Models", section 3.2: "query attention" aggregation of the DiT
/// trunk's tokens).
///
/// # Shapes
/// - input `[B, L, D]` -> output `[B, D]`
#[derive(Module, Debug)]
pub struct QueryPool<B: Backend> {
    /// The learnable query, `[1, 1, D]`.
    pub query: Param<Tensor<B, 3>>,
    /// The attention.
    pub attention: MultiHeadAttention<B>,
}

impl<B: Backend> QueryPool<B> {
    /// Pools tokens into one vector per sample.
    pub fn forward(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, _, d] = tokens.dims();
        let q = self.query.val().expand([b, 1, d]);
        let out = self
            .attention
            .forward(MhaInput::new(q.clone(), tokens.clone(), tokens))
            .context;
        (out + q).reshape([b, d])
    }
}
