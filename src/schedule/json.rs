//! Reading a pipeline's `scheduler/scheduler_config.json` into one of our scheduler configs.

use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

use crate::error::Error;

/// What one scheduler config reader accepts.
pub(crate) struct JsonSpec<'a> {
    /// Accepted `_class_name`s (a file without one is accepted).
    pub classes: &'a [&'a str],
    /// Fields read into the config; every other field is dropped.
    pub known: &'a [&'a str],
    /// Fields that must keep diffusers' default (the value given) because this port does not
    /// implement the alternative; another value is an error naming the field.
    pub fixed: &'a [(&'a str, Value)],
}

/// Reads `path` into `T`: the file's known fields overlaid on `defaults`, each field checked on
/// its own so a wrong type or value is an error naming it (and the file).
pub(crate) fn read_config<T: Serialize + DeserializeOwned>(
    path: &Path,
    defaults: &T,
    spec: &JsonSpec,
) -> crate::Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json_err = |error| Error::Json {
        path: path.to_path_buf(),
        error,
    };
    let bad = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
    let map: Map<String, Value> = serde_json::from_str(&text).map_err(json_err)?;
    if let Some(class) = map.get("_class_name")
        && !class.as_str().is_some_and(|c| spec.classes.contains(&c))
    {
        return Err(bad(format!(
            "field `_class_name` is {class}, expected one of {:?}",
            spec.classes
        )));
    }
    for (field, default) in spec.fixed {
        match map.get(*field) {
            Some(v) if v != default => {
                return Err(bad(format!(
                    "field `{field}` = {v} is not supported (only {default})"
                )));
            }
            _ => {}
        }
    }
    let mut merged = match serde_json::to_value(defaults).map_err(json_err)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (field, value) in map {
        if !spec.known.contains(&field.as_str()) {
            continue;
        }
        merged.insert(field.clone(), value);
        if let Err(e) = serde_json::from_value::<T>(Value::Object(merged.clone())) {
            return Err(bad(format!("field `{field}`: {e}")));
        }
    }
    serde_json::from_value(Value::Object(merged)).map_err(json_err)
}
