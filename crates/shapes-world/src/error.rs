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
