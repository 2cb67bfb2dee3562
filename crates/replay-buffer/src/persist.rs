//! Saving and loading buffers as JSON.

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    base::ReplayBuffer,
    error::{BufferError, Result},
};

/// Writes a buffer as JSON atomically (a temporary file in the same folder, then a rename), so a
/// crash never leaves a truncated file behind.
pub fn save<T, Buf: ReplayBuffer<T> + Serialize>(buffer: &Buf, path: &Path) -> Result<()> {
    let io = |source| BufferError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec(buffer).map_err(|e| BufferError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a buffer written by [`save`] and checks its invariants.
///
/// # Errors
/// [`BufferError::Io`] if the file cannot be read, [`BufferError::Corrupt`] if it does not parse
/// or breaks an invariant (more items than capacity, an invalid priority).
pub fn load<T, Buf: ReplayBuffer<T> + DeserializeOwned>(path: &Path) -> Result<Buf> {
    let corrupt = |reason: String| BufferError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| BufferError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let buffer: Buf = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    buffer.check().map_err(corrupt)?;
    Ok(buffer)
}
