//! Reading a diffusers `config.json` onto a config's defaults, strictly.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::Error;

/// Reads the diffusers `config.json` at `path` over `defaults`: `_`-prefixed bookkeeping
/// (`_class_name`, `_diffusers_version`) is dropped, missing fields keep the defaults (which
/// should be diffusers' own), and a field outside `known` is an error naming it and `model`,
/// so a config of another architecture is not silently misread. Values of the wrong type are
/// JSON errors naming the file; `validate`'s error comes back prefixed with the file.
pub fn read_diffusers_config<C: Serialize + DeserializeOwned>(
    path: &Path,
    defaults: &C,
    known: &[&str],
    model: &str,
    validate: impl Fn(&C) -> crate::Result<()>,
) -> crate::Result<C> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json_err = |error| Error::Json {
        path: path.to_path_buf(),
        error,
    };
    let mut map: Map<String, Value> = serde_json::from_str(&text).map_err(json_err)?;
    map.retain(|k, _| !k.starts_with('_'));
    if let Some(field) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Error::Config(format!(
            "{}: field `{field}` is not supported by this {model} port",
            path.display()
        )));
    }
    let mut merged = match serde_json::to_value(defaults).map_err(json_err)? {
        Value::Object(defaults) => defaults,
        _ => Map::new(),
    };
    merged.extend(map);
    let config = serde_json::from_value(Value::Object(merged)).map_err(json_err)?;
    validate(&config).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Ok(config)
}
