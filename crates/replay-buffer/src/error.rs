//! Errors of the replay buffers.

/// Failures of buffer operations.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// A buffer must hold at least one item.
    #[error("buffer capacity must be at least 1")]
    ZeroCapacity,
    /// Priorities must be finite and non-negative.
    #[error("priority must be finite and >= 0, got {0}")]
    InvalidPriority(f64),
    /// Sampling from an empty buffer.
    #[error("cannot sample from an empty buffer")]
    Empty,
    /// Reading or writing a saved buffer failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A saved buffer could not be parsed, or breaks the buffer's invariants.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result of buffer operations.
pub type Result<T> = std::result::Result<T, BufferError>;
