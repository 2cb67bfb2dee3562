//! Safetensors weights read tensor by tensor from memory-mapped files: one file, or a folder of
//! shards with the `*.safetensors.index.json` that diffusers and transformers write.
//!
//! Nothing is read up front but the headers. [`TensorFiles::read_f32`] decodes one tensor and
//! then hands its pages back to the kernel, so loading a model holds the model plus one tensor,
//! not the model plus the file.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{tensor::Metadata, Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{CoreError, Result};

/// One memory-mapped safetensors file and its parsed header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Offset of the data section (8 + header length).
    data_start: usize,
    meta: Metadata,
}

/// The tensors of one safetensors file or of a sharded folder, looked up by key.
pub struct TensorFiles {
    /// The file, or the sharded folder's index.
    source: PathBuf,
    shards: Vec<Shard>,
    /// Key -> index in `shards`.
    keys: BTreeMap<String, usize>,
}

/// `*.safetensors.index.json` as written by `save_pretrained`.
#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

fn parse_error(path: &Path, reason: impl Into<String>) -> CoreError {
    CoreError::Safetensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let io = |source| CoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private; a file changed by another process while it
        // is mapped is outside what any safetensors reader (PyTorch's included) can guard.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (header, meta) =
            SafeTensors::read_metadata(&map).map_err(|e| parse_error(path, e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            data_start: 8 + header,
            meta,
        })
    }

    fn names(&self) -> Vec<String> {
        self.meta.tensors().into_keys().collect()
    }
}

impl TensorFiles {
    /// Maps one safetensors file.
    ///
    /// # Errors
    /// `Io` when the file cannot be opened; `Safetensors` (naming it) when its header does not
    /// parse or its length disagrees with the header (a truncated file).
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self> {
        let shard = Shard::open(path.as_ref())?;
        let keys = shard.names().into_iter().map(|k| (k, 0)).collect();
        Ok(Self {
            source: path.as_ref().to_path_buf(),
            shards: vec![shard],
            keys,
        })
    }

    /// Maps the weights of a diffusers model folder: `{stem}.safetensors.index.json` and the
    /// shards it names, or else `{stem}.safetensors` (diffusers' stem is
    /// `diffusion_pytorch_model`).
    ///
    /// # Errors
    /// `Io` naming the file when neither exists or a shard the index names is missing;
    /// `Safetensors` naming the file when the index does not parse, names a file outside the
    /// folder, maps a key to a shard that does not hold it, or a shard holds a key the index
    /// does not list.
    pub fn open_folder(dir: impl AsRef<Path>, stem: &str) -> Result<Self> {
        let dir = dir.as_ref();
        let index_path = dir.join(format!("{stem}.safetensors.index.json"));
        if !index_path.exists() {
            let single = dir.join(format!("{stem}.safetensors"));
            if !single.exists() {
                return Err(CoreError::Io {
                    path: single,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("neither it nor {} exists", index_path.display()),
                    ),
                });
            }
            return Self::open_file(single);
        }
        let text = std::fs::read_to_string(&index_path).map_err(|source| CoreError::Io {
            path: index_path.clone(),
            source,
        })?;
        let index: Index = serde_json::from_str(&text)
            .map_err(|e| parse_error(&index_path, format!("not an index file: {e}")))?;
        let mut shards: Vec<Shard> = Vec::new();
        let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
        let mut keys = BTreeMap::new();
        for (key, file) in &index.weight_map {
            let plain = Path::new(file).file_name().map(|n| n == file.as_str());
            if plain != Some(true) {
                return Err(parse_error(
                    &index_path,
                    format!("`{key}` maps to `{file}`, which is not a file name in this folder"),
                ));
            }
            let at = match by_name.get(file.as_str()) {
                Some(&at) => at,
                None => {
                    shards.push(Shard::open(&dir.join(file))?);
                    by_name.insert(file, shards.len() - 1);
                    shards.len() - 1
                }
            };
            if shards[at].meta.info(key).is_none() {
                return Err(parse_error(
                    &shards[at].path,
                    format!(
                        "the index maps `{key}` to this file, which does not hold it ({})",
                        index_path.display()
                    ),
                ));
            }
            keys.insert(key.clone(), at);
        }
        for shard in &shards {
            if let Some(extra) = shard.names().into_iter().find(|k| !keys.contains_key(k)) {
                return Err(parse_error(
                    &shard.path,
                    format!(
                        "holds `{extra}`, which {} does not list",
                        index_path.display()
                    ),
                ));
            }
        }
        Ok(Self {
            source: index_path,
            shards,
            keys,
        })
    }

    /// Every key, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The file holding `key`.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        self.keys.get(key).map(|&i| self.shards[i].path.as_path())
    }

    /// Dtype and shape of `key` without reading its data.
    ///
    /// # Errors
    /// `MissingKey` when no file holds it.
    pub fn info(&self, key: &str) -> Result<(Dtype, &[usize])> {
        let (_, info) = self.lookup(key)?;
        Ok((info.dtype, &info.shape))
    }

    fn lookup(&self, key: &str) -> Result<(&Shard, &safetensors::tensor::TensorInfo)> {
        let missing = || CoreError::MissingKey {
            path: self.source.clone(),
            key: key.to_string(),
        };
        let shard = &self.shards[*self.keys.get(key).ok_or_else(missing)?];
        let info = shard.meta.info(key).ok_or_else(missing)?;
        Ok((shard, info))
    }

    /// Decodes `key` (F32, F16 or BF16, little-endian) to f32 and releases its pages.
    ///
    /// # Errors
    /// `MissingKey`; `KeyDtype` for other dtypes; `NonFinite` naming the key and file when a
    /// value is NaN or infinite (bit rot, a diverged run).
    pub fn read_f32(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shard, info) = self.lookup(key)?;
        let (start, end) = info.data_offsets;
        let range = shard.data_start + start..shard.data_start + end;
        let values = decode_f32(&shard.path, key, info.dtype, &shard.map[range.clone()])?;
        // SAFETY: DONTNEED on a private read-only file map only drops clean pages, which the
        // kernel reads back from the file if they are touched again; no data is lost.
        let _ = unsafe {
            shard
                .map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len())
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::NonFinite {
                what: format!(
                    "`{key}` of {} (element {i} is {})",
                    shard.path.display(),
                    values[i]
                ),
            });
        }
        Ok((info.shape.clone(), values))
    }
}

impl TensorFiles {
    /// Reads an integer tensor (I64 or I32) as i64.
    ///
    /// # Errors
    /// `MissingKey`; `KeyDtype` for other dtypes.
    pub fn read_i64(&self, key: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (shard, info) = self.lookup(key)?;
        let (start, end) = info.data_offsets;
        let data = &shard.map[shard.data_start + start..shard.data_start + end];
        let values = match info.dtype {
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I32 => data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
            other => {
                return Err(CoreError::KeyDtype {
                    path: shard.path.clone(),
                    key: key.to_string(),
                    dtype: format!("{other:?} (an integer tensor was expected)"),
                })
            }
        };
        Ok((info.shape.clone(), values))
    }

    /// The string metadata (`__metadata__`) of the first file.
    pub fn metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        self.shards.first().and_then(|s| s.meta.metadata().as_ref())
    }

    /// The file, or the sharded folder's index.
    pub fn path(&self) -> &Path {
        &self.source
    }
}

/// Decodes little-endian F32 / F16 / BF16 bytes.
pub(crate) fn decode_f32(path: &Path, key: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(CoreError::KeyDtype {
                path: path.to_path_buf(),
                key: key.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}
