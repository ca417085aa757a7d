//! Reading the fields we use from a transformers `config.json`, one by one, so that a field of
//! the wrong type is reported by name.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::Error;

/// A parsed transformers `config.json`.
///
/// Unknown fields are ignored on purpose: transformers writes dozens of generic
/// `PretrainedConfig` fields (`architectures`, `dtype`/`torch_dtype`, `initializer_factor`,
/// `dropout`, `transformers_version`, generation defaults...) whose set changes from version to
/// version, and rejecting them would reject the published configs. Each model instead reads the
/// fields that shape its computation, checks their types and values, and refuses the few
/// fields whose non-default values it does not implement (see each config's `from_transformers_json`).
pub(crate) struct ConfigJson {
    path: PathBuf,
    map: Map<String, Value>,
}

impl ConfigJson {
    /// Reads and parses `path` (a JSON object).
    pub fn read(path: &Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|error| Error::Json {
            path: path.to_path_buf(),
            error,
        })?;
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_path_buf(),
                map,
            }),
            _ => Err(self_error(path, "the file is not a JSON object")),
        }
    }

    /// Field `key` as a `T`, or `default` when absent (transformers' default for the field).
    /// A present `null` or a value of another type is an error naming the key.
    pub fn get<T: DeserializeOwned>(&self, key: &str, default: T) -> crate::Result<T> {
        match self.map.get(key) {
            None => Ok(default),
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
                self.error(&format!(
                    "field `{key}` has the wrong type or value ({value}): {e}"
                ))
            }),
        }
    }

    /// A config error naming the file.
    pub fn error(&self, message: &str) -> Error {
        self_error(&self.path, message)
    }
}

fn self_error(path: &Path, message: &str) -> Error {
    Error::Config(format!("{}: {message}", path.display()))
}
