//! Saving and loading buffers as JSON.

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    base::ReplayBuffer,
    error::{BufferError, Result},
};

/// Writes a buffer as JSON atomically (a temporary `.NAME.tmp-PID` in the same folder, fsync,
/// rename, fsync of the folder), so a crash leaves the old file or the new one, never a
/// truncated one.
pub fn save<T, Buf: ReplayBuffer<T> + Serialize>(buffer: &Buf, path: &Path) -> Result<()> {
    use std::io::Write;
    let io = |source| BufferError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec(buffer).map_err(|e| BufferError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
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
