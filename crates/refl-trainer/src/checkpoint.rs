//! Checkpoint folders: every file written atomically under a step tag, with a CRC-32 per file
//! recorded in `state.json`, which is written last. A crash mid-save leaves the previous
//! checkpoint whole; a file that changed on disk is an error naming it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use burn::{
    module::Module,
    record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder},
    tensor::backend::Backend,
};
use diffusion_core::io::checkpoint::{decode_record, write_atomic};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Result, TrainError};

fn error(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes the files of one checkpoint (`STEM-TAG.EXT` in the folder) and remembers their checksums.
#[derive(Debug)]
pub struct CheckpointWriter {
    dir: PathBuf,
    tag: String,
    pub(crate) files: BTreeMap<String, u32>,
}

impl CheckpointWriter {
    pub(crate) fn new(dir: &Path, tag: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            tag: tag.to_string(),
            files: BTreeMap::new(),
        }
    }

    /// The file name of `name` in the checkpoint tagged `tag` (`policy.mpk` ->
    /// `policy-00000040.mpk`).
    pub(crate) fn file_name(name: &str, tag: &str) -> String {
        match name.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem}-{tag}.{ext}"),
            None => format!("{name}-{tag}"),
        }
    }

    /// Writes `bytes` as the file `name`.
    ///
    /// # Errors
    /// `Core(Io)` when the file cannot be written.
    pub fn bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let file = Self::file_name(name, &self.tag);
        write_atomic(&self.dir.join(&file), bytes)?;
        self.files.insert(file, crc32fast::hash(bytes));
        Ok(())
    }

    /// Writes a module's record (named MessagePack, full precision) as the file `name`.
    ///
    /// # Errors
    /// `Checkpoint` when the record does not serialise; IO errors.
    pub fn record<B: Backend, M: Module<B>>(&mut self, name: &str, module: M) -> Result<()> {
        let bytes = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
            .record(module.into_record(), ())
            .map_err(|e| error(&self.dir.join(name), e.to_string()))?;
        self.bytes(name, &bytes)
    }

    /// Writes a value as JSON as the file `name`.
    ///
    /// # Errors
    /// `Checkpoint` when the value does not serialise; IO errors.
    pub fn json<T: Serialize>(&mut self, name: &str, value: &T) -> Result<()> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| error(&self.dir.join(name), e.to_string()))?;
        self.bytes(name, &bytes)
    }
}

/// Reads the files of one checkpoint, checking each against its recorded checksum.
#[derive(Debug)]
pub struct CheckpointReader {
    dir: PathBuf,
    tag: String,
    files: BTreeMap<String, u32>,
}

impl CheckpointReader {
    pub(crate) fn new(dir: &Path, tag: &str, files: BTreeMap<String, u32>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            tag: tag.to_string(),
            files,
        }
    }

    /// The bytes of the file `name`.
    ///
    /// # Errors
    /// `Checkpoint` naming the file when `state.json` does not list it, it cannot be read or
    /// its checksum differs.
    pub fn bytes(&self, name: &str) -> Result<Vec<u8>> {
        let file = CheckpointWriter::file_name(name, &self.tag);
        let path = self.dir.join(&file);
        let want = *self
            .files
            .get(&file)
            .ok_or_else(|| error(&path, "not listed in state.json"))?;
        let bytes = std::fs::read(&path).map_err(|e| error(&path, e.to_string()))?;
        let found = crc32fast::hash(&bytes);
        if found != want {
            return Err(error(
                &path,
                format!("checksum {found:08x}, state.json recorded {want:08x}: the file changed"),
            ));
        }
        Ok(bytes)
    }

    /// Loads the record `name` into `module`, which must have the structure and shapes it was
    /// saved from.
    ///
    /// # Errors
    /// `Checkpoint` naming the file when it does not decode or a parameter's shape differs.
    pub fn record<B: Backend, M: Module<B>>(
        &self,
        name: &str,
        module: M,
        device: &B::Device,
    ) -> Result<M> {
        let path = self.dir.join(CheckpointWriter::file_name(name, &self.tag));
        let bytes = self.bytes(name)?;
        decode_record(module, bytes, device).map_err(|reason| error(&path, reason))
    }

    /// Reads the JSON file `name`.
    ///
    /// # Errors
    /// `Checkpoint` naming the file when it does not parse as `T`.
    pub fn json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = self.dir.join(CheckpointWriter::file_name(name, &self.tag));
        serde_json::from_slice(&self.bytes(name)?).map_err(|e| error(&path, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::{
        backend::Autodiff,
        nn::{Linear, LinearConfig},
        tensor::DType,
    };
    use diffusion_core::{
        backend::Flex,
        train::precision::{cast_frozen, Precision},
    };

    type AD = Autodiff<Flex>;

    /// A record written from a model with half-precision frozen weights loads back into one
    /// with the same dtypes and values (records themselves hold f32).
    #[test]
    fn records_keep_each_parameters_dtype() {
        let dev = Default::default();
        let dir = tempfile::tempdir().unwrap();
        let model = || -> [Linear<AD>; 2] {
            let frozen = LinearConfig::new(3, 2).init::<AD>(&dev).no_grad();
            [LinearConfig::new(3, 2).init::<AD>(&dev), frozen]
                .map(|l| cast_frozen(l, Precision::Bf16))
        };
        let saved = model();
        let mut writer = CheckpointWriter::new(dir.path(), "step-1");
        writer.record("model", saved.clone().to_vec()).unwrap();
        let reader = CheckpointReader::new(dir.path(), "step-1", writer.files.clone());
        let loaded = reader.record("model", model().to_vec(), &dev).unwrap();
        for (l, s) in loaded.iter().zip(&saved) {
            let (lw, sw) = (l.weight.val(), s.weight.val());
            assert_eq!(lw.dtype(), sw.dtype());
            assert_eq!(l.weight.is_require_grad(), s.weight.is_require_grad());
            lw.into_data().assert_eq(&sw.into_data(), true);
        }
        assert_eq!(loaded[1].weight.val().dtype(), DType::BF16);
    }
}
