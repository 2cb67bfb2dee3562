//! Errors of `shapes-world`.

/// Failures of the world's functions.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// A word outside the vocabulary.
    #[error("word `{0}` is not in the shapes-world vocabulary")]
    UnknownWord(String),
    /// A prompt that does not describe one caption of the world.
    #[error("invalid caption: {0}")]
    Caption(String),
    /// A video configuration the renderer cannot honour.
    #[error("invalid video config: {0}")]
    InvalidConfig(String),
    /// Tensors of the wrong shape.
    #[error("shape mismatch for {what}: expected {expected:?}, found {found:?}")]
    Shape {
        /// What was checked.
        what: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Supplied shape.
        found: Vec<usize>,
    },
}

/// The values of a tensor as `f32`s on the host.
pub(crate) fn host_f32<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> Result<Vec<f32>, WorldError> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| WorldError::InvalidConfig(format!("{e:?}")))
}
