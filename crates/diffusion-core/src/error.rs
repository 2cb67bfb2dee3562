//! Errors of `diffusion-core`.

use std::path::PathBuf;

/// Every failure `diffusion-core` reports instead of panicking.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A configuration value is out of its valid range.
    #[error("invalid config `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A key of a model's `config.json` is unknown or holds a value this library does not
    /// implement.
    #[error("{path}: key `{key}`: {reason}")]
    ConfigKey {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What was expected.
        reason: String,
    },
    /// A tensor handed to an API has the wrong shape.
    #[error("shape mismatch for {what}: expected {expected:?}, found {found:?}")]
    Shape {
        /// What was being checked.
        what: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape that was supplied.
        found: Vec<usize>,
    },
    /// A weight file lacks a key the model needs.
    #[error("{}: missing key `{key}`", path.display())]
    MissingKey {
        /// The file (or a sharded folder's index).
        path: PathBuf,
        /// The missing key, in the checkpoint's naming.
        key: String,
    },
    /// A weight in a checkpoint has a different shape than the model expects.
    #[error("{}: key `{key}` has shape {found:?}, the model expects {expected:?}", path.display())]
    KeyShape {
        /// The file.
        path: PathBuf,
        /// The key, in the checkpoint's naming.
        key: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A weight in a checkpoint has an unsupported element type.
    #[error("{}: key `{key}` has dtype {dtype}; only F32, F16 and BF16 are supported", path.display())]
    KeyDtype {
        /// The file.
        path: PathBuf,
        /// The key, in the checkpoint's naming.
        key: String,
        /// The stored dtype.
        dtype: String,
    },
    /// A model file differs from what its folder's `checksums.json` recorded when it was
    /// written.
    #[error(
        "{}: checksum {found:08x}, but checksums.json recorded {recorded:08x} when it was \
         written: the file changed on disk (if it was replaced on purpose, remove its entry)",
        path.display()
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// CRC-32 of the file as read.
        found: u32,
        /// CRC-32 recorded when it was written.
        recorded: u32,
    },
    /// A record file (named MessagePack) does not hold this model's parameters.
    #[error("{}: not a record of this model: {reason}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// What differs (structure, a parameter's shape, a non-finite value).
        reason: String,
    },
    /// The safetensors container could not be parsed.
    #[error("cannot parse safetensors {path}: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// File IO failed.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A value that must be finite was NaN or infinite.
    #[error("non-finite value in {what}")]
    NonFinite {
        /// What was being checked.
        what: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, CoreError>;

/// Shorthand for [`CoreError::InvalidConfig`].
pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}
