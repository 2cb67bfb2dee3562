//! Reading a diffusers `config.json` key by key, so that every unknown key, unsupported value
//! or value of the wrong type is an error naming the file and the key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{CoreError, Result};

/// The keys of a `config.json`, without the metadata keys that start with `_`.
pub(crate) struct DiffusersConfig {
    path: PathBuf,
    /// Key -> value.
    pub(crate) keys: Map<String, Value>,
}

impl DiffusersConfig {
    /// Reads `path` as a JSON object.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| CoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self {
            path: path.to_path_buf(),
            keys: Map::new(),
        };
        let mut keys: Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| config.error("(file)", format!("not a JSON object: {e}")))?;
        keys.retain(|k, _| !k.starts_with('_'));
        config.keys = keys;
        Ok(config)
    }

    /// `ConfigKey` naming this file and `key`.
    pub(crate) fn error(&self, key: &str, reason: impl Into<String>) -> CoreError {
        CoreError::ConfigKey {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// Checks that `value` deserialises as field `key` of `T`, by deserialising `valid` (a
    /// valid `T` as JSON) with that one key replaced.
    pub(crate) fn check_field<T: DeserializeOwned>(
        &self,
        valid: &Value,
        key: &str,
        value: &Value,
    ) -> Result<()> {
        let mut one = valid.clone();
        one[key] = value.clone();
        serde_json::from_value::<T>(one)
            .map(drop)
            .map_err(|e| self.error(key, e.to_string()))
    }

    /// Deserialises `fields` (checked keys) as `T`.
    pub(crate) fn build<T: DeserializeOwned>(&self, fields: Map<String, Value>) -> Result<T> {
        serde_json::from_value(Value::Object(fields))
            .map_err(|e| self.error("(file)", e.to_string()))
    }
}
