//! Settings files: a run's settings in TOML (`--config run.toml`), laid over defaults and
//! under the flags given, and the resolved settings written into the output folder and each
//! checkpoint (`config.toml`), so that a resumed run needs no flag repeated.
//!
//! A settings file has the run's own keys (the model, the data, the LoRA rank: whatever the
//! program reading it names them) at the top and the whole [`TrainConfig`] under `[train]`
//! (`[train.ctcal]` for the loss, `[train.ctcal.autoencoder]` for its auto-encoder). Layers
//! merge key by key: a layer's table replaces only the keys it names, down to nested tables.
//! A key that names no setting, or a value of the wrong type, is an error naming the file and
//! the key, not a silent default. TOML has no null: an optional setting is turned off with
//! `"none"` (`max_grad_norm = "none"`), and resolved files write the ones that are off so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TrainConfig;
use crate::error::{Error, Result};
use crate::weights::write_atomic;

/// The resolved settings' file name, in the output folder and in each checkpoint folder.
pub const SETTINGS_FILE: &str = "config.toml";

/// The table holding the [`TrainConfig`] in a settings file.
pub const TRAIN_TABLE: &str = "train";

/// A parsed TOML settings file and where it came from (named in every error about it).
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsFile {
    /// The file (or another description of the text's origin).
    pub origin: String,
    /// Its keys and values.
    pub table: toml::Table,
}

impl SettingsFile {
    /// Reads and parses `path`; a syntax error names the file, line and column.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `text`, naming `origin` in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let table = text.parse::<toml::Table>().map_err(|e| {
            // toml's message starts with "TOML parse error at line L, column C".
            Error::Config(format!("{origin}: {}", e.to_string().trim_end()))
        })?;
        Ok(Self {
            origin: origin.into(),
            table,
        })
    }

    /// The run's own keys: every key but the `[train]` table.
    pub fn run_keys(&self) -> toml::Table {
        let mut run = self.table.clone();
        run.remove(TRAIN_TABLE);
        run
    }

    /// The `[train]` table (empty when the file has none); an error when `train` is not a
    /// table.
    pub fn train_table(&self) -> Result<toml::Table> {
        match self.table.get(TRAIN_TABLE) {
            None => Ok(toml::Table::new()),
            Some(toml::Value::Table(t)) => Ok(t.clone()),
            Some(other) => Err(Error::Config(format!(
                "{}: `{TRAIN_TABLE}` must be a table ([{TRAIN_TABLE}]), not a {}",
                self.origin,
                other.type_str()
            ))),
        }
    }

    /// `base` with this file's `[train]` table laid over it.
    pub fn train_config(&self, base: &TrainConfig) -> Result<TrainConfig> {
        overlay(base, &self.train_table()?, &self.at(TRAIN_TABLE))
    }

    /// The origin with a table's name, for messages about its keys (`run.toml [train]`).
    fn at(&self, table: &str) -> String {
        format!("{} [{table}]", self.origin)
    }
}

/// The string that turns an optional setting off (TOML has no null): `ema_decay = "none"`.
pub const NONE: &str = "none";

/// `value` as a TOML table; optional settings that are off are written as [`NONE`], so a
/// resolved file lists every setting and reads back to the same value over any base.
pub fn to_table<T: Serialize>(value: &T) -> Result<toml::Table> {
    let json = serde_json::to_value(value).map_err(unwritable)?;
    match json_to_toml(json, "")? {
        toml::Value::Table(t) => Ok(t),
        other => Err(unwritable(format!("a {} is not a table", other.type_str()))),
    }
}

fn unwritable(e: impl std::fmt::Display) -> Error {
    Error::Config(format!("settings cannot be written as TOML: {e}"))
}

fn json_to_toml(json: serde_json::Value, key: &str) -> Result<toml::Value> {
    use serde_json::Value as J;
    Ok(match json {
        J::Null => toml::Value::String(NONE.into()),
        J::Bool(b) => toml::Value::Boolean(b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(_)) if n.is_u64() => {
                return Err(unwritable(format!("`{key}` = {n} is past TOML's integers")));
            }
            (None, Some(f)) => toml::Value::Float(f),
            (None, None) => return Err(unwritable(format!("`{key}` = {n}"))),
        },
        J::String(s) => toml::Value::String(s),
        J::Array(items) => toml::Value::Array(
            items
                .into_iter()
                .map(|v| json_to_toml(v, key))
                .collect::<Result<_>>()?,
        ),
        J::Object(map) => toml::Value::Table(
            map.into_iter()
                .map(|(k, v)| {
                    let path = if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    };
                    Ok((k, json_to_toml(v, &path)?))
                })
                .collect::<Result<_>>()?,
        ),
    })
}

/// Drops the keys set to [`NONE`] (at any depth), so they deserialise as `None`.
fn strip_none(table: &mut toml::Table) {
    table.retain(|_, v| v.as_str() != Some(NONE));
    for (_, value) in table.iter_mut() {
        if let toml::Value::Table(t) = value {
            strip_none(t);
        }
    }
}

/// Lays `layer` over `base`: tables are merged key by key (recursively), any other value
/// replaces the one below it, and so does a choice with data (an enum variant: a table whose
/// one key is capitalised, `{ FixedSigma = 0.05 }`), which is one setting.
pub fn merge(base: &mut toml::Table, layer: &toml::Table) {
    let variant = |t: &toml::Table| is_variant(t.keys());
    for (key, value) in layer {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above))
                if !variant(below) && !variant(above) =>
            {
                merge(below, above)
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Whether a table with these keys is an enum variant with data as serde writes it (one
/// capitalised key, `{ FixedSigma = 0.05 }`): one setting, replaced whole, never merged key by
/// key with another variant.
pub(crate) fn is_variant<'a>(keys: impl ExactSizeIterator<Item = &'a String>) -> bool {
    keys.len() == 1
        && keys
            .into_iter()
            .all(|k| k.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// `base` with the keys of `layer` laid over it ([`merge`]). Every key of `layer` must be a
/// setting of `T` and every value of its type: errors name `origin` and the key's path.
pub fn overlay<T: Serialize + DeserializeOwned>(
    base: &T,
    layer: &toml::Table,
    origin: &str,
) -> Result<T> {
    let mut merged = to_table(base)?;
    merge(&mut merged, layer);
    from_table(merged, origin)
}

/// Reads a `T` from `table`, refusing keys that name no field of it (serde would skip them);
/// keys set to [`NONE`] are left out (`None`).
pub fn from_table<T: DeserializeOwned>(mut table: toml::Table, origin: &str) -> Result<T> {
    strip_none(&mut table);
    let mut unknown = Vec::new();
    let value = toml::Value::Table(table);
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let ignored = serde_ignored::Deserializer::new(value, &mut note);
    let parsed: std::result::Result<T, _> = serde_path_to_error::deserialize(ignored);
    match parsed {
        Err(e) => {
            let path = e.path().to_string();
            // toml's message repeats the key on a line of its own: keep the first line.
            let inner = e.into_inner().to_string();
            let inner = inner.lines().next().unwrap_or_default();
            Err(Error::Config(match path.as_str() {
                "." => format!("{origin}: {inner}"),
                key => format!("{origin}: `{key}`: {inner}"),
            }))
        }
        Ok(_) if !unknown.is_empty() => Err(Error::Config(format!(
            "{origin}: unknown setting{} {}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        Ok(v) => Ok(v),
    }
}

/// The text of a resolved settings file: `run`'s keys, then `train` under `[train]`.
pub fn render(run: &toml::Table, train: &TrainConfig) -> Result<String> {
    let mut table = run.clone();
    table.insert(TRAIN_TABLE.into(), toml::Value::Table(to_table(train)?));
    let body = toml::to_string_pretty(&table).map_err(unwritable)?;
    Ok(format!(
        "# The resolved settings of this run (ctcal): flags and `--config` files laid over the\n\
         # defaults. `--resume` reads them; `--config` takes this file to start a new run alike.\n\n\
         {body}"
    ))
}

/// Writes `text` (from [`render`]) as [`SETTINGS_FILE`] in `dir`, atomically.
pub fn write_settings(dir: &Path, text: &str) -> Result<PathBuf> {
    let path = dir.join(SETTINGS_FILE);
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// How a command-line program's training config is made: the config its flags (and their
/// defaults) give, the settings files' `[train]` tables over it, and the keys of the flags given
/// on the command line over those (flags override files, files override defaults).
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// Settings files from the lowest: the run's saved settings (on resume), `--config`.
    pub files: Vec<SettingsFile>,
    /// `[train]` keys (dotted) that flags given on the command line set.
    pub flagged: BTreeSet<String>,
}

impl Layers {
    /// `flags` (the config the flags and their defaults make) with the files' `[train]` tables
    /// laid over it, then the keys set by flags given on the command line laid over those.
    pub fn train_config(&self, flags: TrainConfig) -> Result<TrainConfig> {
        let mut config = flags.clone();
        for file in &self.files {
            config = file.train_config(&config)?;
        }
        if self.flagged.is_empty() {
            return Ok(config);
        }
        let from_flags = to_table(&flags)?;
        let mut layer = toml::Table::new();
        for key in &self.flagged {
            copy_key(&from_flags, &mut layer, key);
        }
        overlay(&config, &layer, "the command line's training flags")
    }
}

/// Copies the dotted `key` of `from` into `to`, making the tables on its way.
fn copy_key(from: &toml::Table, to: &mut toml::Table, key: &str) {
    let (mut from, mut to) = (from, to);
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(value) = from.get(*part) else { return };
        if i + 1 == parts.len() {
            to.insert(part.to_string(), value.clone());
            return;
        }
        let Some(table) = value.as_table() else {
            return;
        };
        from = table;
        let entry = to
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(next) = entry.as_table_mut() else {
            return;
        };
        to = next;
    }
}

#[cfg(test)]
mod tests;
