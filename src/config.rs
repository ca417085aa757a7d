//! The one reader of the JSON configuration files diffusers and transformers write
//! (`config.json` of a model, `scheduler_config.json`, `model_index.json`, a shard index).
//!
//! [`ConfigFile`] reads a file into a JSON object and answers field by field, so that every
//! error names the file and the field. What a file may hold differs by writer, and each config
//! says which policy it follows:
//! - diffusers model configs (`SD3Transformer2DModel`, `AutoencoderKL`): fields outside the
//!   port are errors ([`ConfigFile::reject_unknown`]), the rest overlays diffusers' defaults
//!   ([`ConfigFile::overlay`]);
//! - scheduler configs carry every option of their own class: only known fields are read, a
//!   few must keep their default ([`ConfigFile::reject_changed`]), and the `_class_name` is
//!   checked ([`ConfigFile::expect_class`]);
//! - transformers configs carry dozens of generic fields: each model reads its own with
//!   [`ConfigFile::get`];
//! - configs whose shape differs from ours (the UNet's per-block lists) deserialize the whole
//!   object into a raw struct first ([`ConfigFile::deserialize`]).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A parsed JSON object and the file it came from.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    map: Map<String, Value>,
}

impl ConfigFile {
    /// Reads and parses `path`, which must hold a JSON object.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        // A byte-order mark is not JSON, but editors on Windows write one.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let value: Value = serde_json::from_str(text).map_err(|error| Error::Json {
            path: path.to_path_buf(),
            error,
        })?;
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_path_buf(),
                map,
            }),
            other => Err(config_error(
                path,
                &format!("expected a JSON object, found {}", kind(&other)),
            )),
        }
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fields, `_`-prefixed bookkeeping (`_class_name`, `_diffusers_version`) included.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The `_class_name` diffusers writes, if any.
    pub fn class_name(&self) -> Option<&str> {
        self.map.get("_class_name").and_then(Value::as_str)
    }

    /// Accepts a file without `_class_name` or with one of `classes`.
    pub fn expect_class(&self, classes: &[&str]) -> Result<()> {
        match self.map.get("_class_name") {
            Some(class) if !class.as_str().is_some_and(|c| classes.contains(&c)) => Err(self
                .error(&format!(
                    "field `_class_name` is {class}, expected one of {classes:?}"
                ))),
            _ => Ok(()),
        }
    }

    /// Refuses a field (other than `_`-prefixed bookkeeping) outside `known`, naming it and
    /// `model`, so that a config of another architecture is not silently misread.
    pub fn reject_unknown(&self, known: &[&str], model: &str) -> Result<()> {
        match self
            .map
            .keys()
            .find(|k| !k.starts_with('_') && !known.contains(&k.as_str()))
        {
            Some(field) => Err(self.error(&format!(
                "field `{field}` is not supported by this {model} port"
            ))),
            None => Ok(()),
        }
    }

    /// Refuses a field of `fixed` present with another value than the one given (options whose
    /// alternatives the port does not implement).
    pub fn reject_changed(&self, fixed: &[(&str, Value)]) -> Result<()> {
        for (field, default) in fixed {
            if let Some(v) = self.map.get(*field)
                && v != default
            {
                return Err(self.error(&format!(
                    "field `{field}` = {v} is not supported (only {default})"
                )));
            }
        }
        Ok(())
    }

    /// Field `key` as a `T`, or `default` when absent. A present `null` or a value of another
    /// type is an error naming the key.
    pub fn get<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        match self.map.get(key) {
            None => Ok(default),
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
                self.error(&format!(
                    "field `{key}` has the wrong type or value ({value}): {e}"
                ))
            }),
        }
    }

    /// `defaults` with every field of `known` that the file holds laid over it, checked one
    /// field at a time so a wrong type or value is an error naming the field. Fields outside
    /// `known` are not read.
    pub fn overlay<T: Serialize + DeserializeOwned>(
        &self,
        defaults: &T,
        known: &[&str],
    ) -> Result<T> {
        let mut merged = match serde_json::to_value(defaults) {
            Ok(Value::Object(m)) => m,
            _ => return Err(self.error("the defaults do not serialize to an object")),
        };
        for (field, value) in &self.map {
            if !known.contains(&field.as_str()) {
                continue;
            }
            merged.insert(field.clone(), value.clone());
            if let Err(e) = serde_json::from_value::<T>(Value::Object(merged.clone())) {
                return Err(self.error(&format!("field `{field}`: {e}")));
            }
        }
        serde_json::from_value(Value::Object(merged)).map_err(|e| self.error(&e.to_string()))
    }

    /// The whole object deserialized as a `T` (serde's error, naming the file).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.map.clone())).map_err(|error| Error::Json {
            path: self.path.clone(),
            error,
        })
    }

    /// A config error naming the file.
    pub fn error(&self, message: &str) -> Error {
        config_error(&self.path, message)
    }
}

fn config_error(path: &Path, message: &str) -> Error {
    Error::Config(format!("{}: {message}", path.display()))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A setting a model folder's config file fixes (`from_file`, read from `file`) against the
/// same setting given on the command line (`flag`): the flag may only repeat the file unless
/// `force` (a fine-tune towards another prediction target or shift than the model was trained
/// with is almost always a mistake), and the choice is returned.
pub fn file_setting<T: PartialEq + std::fmt::Debug>(
    name: &str,
    from_file: T,
    flag: Option<T>,
    force: bool,
    file: &Path,
) -> Result<T> {
    match flag {
        Some(flag) if flag != from_file && !force => Err(Error::Config(format!(
            "--{name} {flag:?} contradicts {}, which says {from_file:?}; leave the flag out to \
             use the file's, or add --override-scheduler to train with the flag's anyway",
            file.display()
        ))),
        Some(flag) => Ok(flag),
        None => Ok(from_file),
    }
}

/// Reads the diffusers model `config.json` at `path` over `defaults`: `_`-prefixed bookkeeping
/// is dropped, missing fields keep the defaults (which should be diffusers' own), a field
/// outside `known` is an error naming it and `model`, values of the wrong type are errors
/// naming the field, and `validate`'s error comes back prefixed with the file.
pub fn read_diffusers_config<C: Serialize + DeserializeOwned>(
    path: &Path,
    defaults: &C,
    known: &[&str],
    model: &str,
    validate: impl Fn(&C) -> Result<()>,
) -> Result<C> {
    let file = ConfigFile::read(path)?;
    file.reject_unknown(known, model)?;
    let config = file.overlay(defaults, known)?;
    validate(&config).map_err(|e| file.error(&e.to_string()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Demo {
        width: usize,
        name: String,
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ctcal-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn overlay_reads_known_fields_and_names_the_bad_one() {
        let defaults = Demo {
            width: 4,
            name: "a".into(),
        };
        let path = write(
            "ok.json",
            "\u{feff}{\"width\": 8, \"other\": 1, \"_class_name\": \"X\"}",
        );
        let file = ConfigFile::read(&path).unwrap();
        assert_eq!(file.class_name(), Some("X"));
        let got: Demo = file.overlay(&defaults, &["width", "name"]).unwrap();
        assert_eq!(
            got,
            Demo {
                width: 8,
                name: "a".into()
            }
        );
        let err = file.reject_unknown(&["width", "name"], "Demo").unwrap_err();
        assert!(
            err.to_string()
                .contains("field `other` is not supported by this Demo port")
        );
        assert!(
            file.expect_class(&["Y"])
                .unwrap_err()
                .to_string()
                .contains("\"X\"")
        );
        file.expect_class(&["X"]).unwrap();

        let path = write("bad.json", r#"{"width": "wide"}"#);
        let file = ConfigFile::read(&path).unwrap();
        let err = file.overlay(&defaults, &["width"]).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("field `width`"),
            "{err}"
        );
        let err = file.get::<usize>("width", 1).unwrap_err().to_string();
        assert!(err.contains("field `width` has the wrong type"), "{err}");
        let err = file
            .reject_changed(&[("width", Value::Null)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`width` = \"wide\" is not supported"), "{err}");
    }

    #[test]
    fn a_non_object_is_refused_naming_the_file() {
        let path = write("list.json", "[1, 2]");
        let err = ConfigFile::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("list.json") && err.contains("an array"),
            "{err}"
        );
        let path = write("broken.json", "{\"a\": ");
        assert!(
            ConfigFile::read(&path)
                .unwrap_err()
                .to_string()
                .contains("broken.json")
        );
    }
}
