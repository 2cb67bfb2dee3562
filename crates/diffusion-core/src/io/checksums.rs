//! A folder's `checksums.json`: the CRC-32 of each model file written there by
//! [`save_record`](super::checkpoint::save_record) or
//! [`save_safetensors`](super::checkpoint::save_safetensors), checked when the file is loaded,
//! so a file changed on disk (bit rot, a partial copy, another model copied over it) is named
//! instead of loading as a silently different model. Files without an entry load unchecked.

use std::{collections::BTreeMap, path::Path};

use super::atomic::{folder_of, write_atomic};
use crate::error::{CoreError, Result};

/// The file name of a folder's checksums.
pub const CHECKSUMS: &str = "checksums.json";

fn name_of(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The checksums recorded in `dir` (empty when it has no `checksums.json`).
///
/// # Errors
/// `ConfigKey` naming `checksums.json` when it exists but does not parse.
pub fn read_checksums(dir: &Path) -> Result<BTreeMap<String, u32>> {
    let path = dir.join(CHECKSUMS);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CoreError::ConfigKey {
            path,
            key: "(file)".into(),
            reason: format!("not a map of file names to CRC-32 checksums: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(CoreError::Io { path, source }),
    }
}

/// Records the checksum of the file at `path`, as it is now, in its folder's `checksums.json`
/// (written atomically).
///
/// # Errors
/// `Io` when the file or the checksums cannot be read or written.
pub fn record_checksum(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|source| CoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = folder_of(path);
    let mut sums = read_checksums(dir)?;
    sums.insert(name_of(path), crc32fast::hash(&bytes));
    let json = serde_json::to_vec_pretty(&sums).expect("a map of strings to numbers");
    write_atomic(&dir.join(CHECKSUMS), &json)
}

/// Checks `bytes`, read from `path`, against the checksum its folder recorded for it, if any.
///
/// # Errors
/// `Checksum` naming the file and both checksums when they differ; as [`read_checksums`].
pub fn verify_checksum(path: &Path, bytes: &[u8]) -> Result<()> {
    let Some(&recorded) = read_checksums(folder_of(path))?.get(&name_of(path)) else {
        return Ok(());
    };
    let found = crc32fast::hash(bytes);
    if found == recorded {
        Ok(())
    } else {
        Err(CoreError::Checksum {
            path: path.to_path_buf(),
            found,
            recorded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_named_and_a_rewrite_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vae.mpk");
        // no checksums yet: nothing to check
        std::fs::write(&path, b"weights").unwrap();
        verify_checksum(&path, b"anything").unwrap();
        record_checksum(&path).unwrap();
        verify_checksum(&path, b"weights").unwrap();
        match verify_checksum(&path, b"weightz") {
            Err(CoreError::Checksum {
                path: p,
                found,
                recorded,
            }) => {
                assert_eq!(p, path);
                assert_eq!(recorded, crc32fast::hash(b"weights"));
                assert_eq!(found, crc32fast::hash(b"weightz"));
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, b"weightz").unwrap();
        record_checksum(&path).unwrap();
        verify_checksum(&path, b"weightz").unwrap();
        // a damaged checksums file is named
        std::fs::write(dir.path().join(CHECKSUMS), b"{\"vae.mpk\": -1}").unwrap();
        assert!(matches!(
            verify_checksum(&path, b"weightz"),
            Err(CoreError::ConfigKey { path, .. }) if path.ends_with(CHECKSUMS)
        ));
    }
}
