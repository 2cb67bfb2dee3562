//! Prompts with their (frozen) text embeddings.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::error::{config_error, Result};

/// Prompts of any type (captions, strings) with their embeddings from a frozen text encoder,
/// computed once.
///
/// # Shapes
/// - `text`: `[N, S, D_text]`
#[derive(Debug, Clone)]
pub struct PromptSet<B: Backend, P> {
    /// The prompts, read by pixel rewards.
    pub prompts: Vec<P>,
    /// Their embeddings, read by the DiT and latent rewards.
    pub text: Tensor<B, 3>,
}

impl<B: Backend, P: Clone> PromptSet<B, P> {
    /// Pairs prompts with embeddings.
    ///
    /// # Errors
    /// `Config` when the counts differ or the set is empty.
    pub fn new(prompts: Vec<P>, text: Tensor<B, 3>) -> Result<Self> {
        if prompts.is_empty() || text.dims()[0] != prompts.len() {
            return Err(config_error(
                "prompts",
                format!(
                    "{} prompts with {} embeddings",
                    prompts.len(),
                    text.dims()[0]
                ),
            ));
        }
        Ok(Self { prompts, text })
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// Never true for a set built by [`PromptSet::new`].
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// The prompts at `idx` and their embeddings `[len(idx), S, D]`.
    pub fn batch(&self, idx: &[usize]) -> (Vec<P>, Tensor<B, 3>) {
        let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let t =
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [idx.len()]), &self.text.device());
        (
            idx.iter().map(|&i| self.prompts[i].clone()).collect(),
            self.text.clone().select(0, t),
        )
    }
}
