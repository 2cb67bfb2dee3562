//! Text encoders: the `TextEncoder` trait and a small learned token encoder.

use burn::{
    config::Config,
    module::{Module, Param},
    nn::{
        transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput},
        Embedding, EmbeddingConfig,
    },
    tensor::{backend::Backend, Distribution, Int, Tensor},
};

use crate::error::{invalid, CoreError};

/// Turns token ids into text embeddings for cross-attention.
///
/// # Shapes
/// - `tokens`: `[B, S]` ids, `0` is padding
/// - output: `[B, S, embed_dim]`
pub trait TextEncoder<B: Backend> {
    /// Embeds a batch of token sequences.
    fn encode(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3>;
    /// Width of the embeddings.
    fn embed_dim(&self) -> usize;
    /// Checks a token batch before encoding (ids in vocabulary, length within limits).
    fn check_tokens(&self, tokens: &[Vec<u32>]) -> crate::Result<()>;
}

/// Configuration of a [`TokenEncoder`].
#[derive(Config, Debug, PartialEq)]
pub struct TokenEncoderConfig {
    /// Vocabulary size, padding id `0` included.
    pub vocab_size: usize,
    /// Embedding width.
    pub dim: usize,
    /// Longest sequence.
    #[config(default = 32)]
    pub max_len: usize,
    /// Transformer encoder layers on top of the embeddings (0 = embeddings only).
    #[config(default = 1)]
    pub layers: usize,
    /// Attention heads of those layers.
    #[config(default = 2)]
    pub heads: usize,
}

impl TokenEncoderConfig {
    /// Builds a randomly initialised encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<TokenEncoder<B>> {
        if self.vocab_size < 2 || self.dim == 0 || self.max_len == 0 {
            return Err(invalid(
                "vocab_size/dim/max_len",
                "need vocab >= 2, dim > 0, max_len > 0",
            ));
        }
        if self.layers > 0 && (self.heads == 0 || self.dim % self.heads != 0) {
            return Err(invalid("heads", format!("must divide dim {}", self.dim)));
        }
        Ok(crate::io::checkpoint::materialize(TokenEncoder {
            embedding: EmbeddingConfig::new(self.vocab_size, self.dim).init(device),
            positions: Param::from_tensor(Tensor::random(
                [self.max_len, self.dim],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            encoder: (self.layers > 0).then(|| {
                TransformerEncoderConfig::new(self.dim, 4 * self.dim, self.heads, self.layers)
                    .with_norm_first(true)
                    .with_dropout(0.0)
                    .init(device)
            }),
            vocab_size: self.vocab_size,
        }))
    }
}

/// A small learned text encoder: token + position embeddings and a pre-norm transformer
/// encoder with padding masked out. Stands in for umT5 on synthetic worlds.
#[derive(Module, Debug)]
pub struct TokenEncoder<B: Backend> {
    /// Token embeddings.
    pub embedding: Embedding<B>,
    /// Learned position embeddings, `[max_len, dim]`.
    pub positions: Param<Tensor<B, 2>>,
    /// Optional transformer layers.
    pub encoder: Option<TransformerEncoder<B>>,
    vocab_size: usize,
}

impl<B: Backend> TokenEncoder<B> {
    /// Pads `tokens` with `0` to a common length and moves them to `device`.
    pub fn batch(
        &self,
        tokens: &[Vec<u32>],
        device: &B::Device,
    ) -> crate::Result<Tensor<B, 2, Int>> {
        self.check_tokens(tokens)?;
        let len = tokens.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let flat: Vec<i64> = tokens
            .iter()
            .flat_map(|t| {
                t.iter()
                    .map(|&v| v as i64)
                    .chain(std::iter::repeat(0))
                    .take(len)
            })
            .collect();
        Ok(Tensor::from_data(
            burn::tensor::TensorData::new(flat, [tokens.len(), len]),
            device,
        ))
    }
}

impl<B: Backend> TextEncoder<B> for TokenEncoder<B> {
    fn encode(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, s] = tokens.dims();
        let pad = tokens.clone().equal_elem(0);
        let x =
            self.embedding.forward(tokens) + self.positions.val().narrow(0, 0, s).unsqueeze::<3>();
        match &self.encoder {
            Some(enc) => enc.forward(TransformerEncoderInput::new(x).mask_pad(pad)),
            None => x,
        }
    }

    fn embed_dim(&self) -> usize {
        self.positions.dims()[1]
    }

    fn check_tokens(&self, tokens: &[Vec<u32>]) -> crate::Result<()> {
        let max_len = self.positions.dims()[0];
        if tokens.is_empty() {
            return Err(invalid("tokens", "empty batch"));
        }
        for t in tokens {
            if t.len() > max_len {
                return Err(CoreError::Shape {
                    what: "token sequence (max_len)".into(),
                    expected: vec![max_len],
                    found: vec![t.len()],
                });
            }
            if let Some(&bad) = t.iter().find(|&&v| v as usize >= self.vocab_size) {
                return Err(invalid(
                    "tokens",
                    format!("id {bad} outside vocabulary of {}", self.vocab_size),
                ));
            }
        }
        Ok(())
    }
}
