//! Reading a tokenizer folder's JSON files and resolving its special tokens the way
//! transformers 5's `PreTrainedTokenizerBase.from_pretrained` does.
//!
//! - `tokenizer_config.json` names the special tokens (`bos_token`, `pad_token`, ...) as
//!   strings or `AddedToken` dicts, and `model_max_length`.
//! - When it has no `added_tokens_decoder` (files written before transformers 4.34, such as
//!   SD 2.1's), `special_tokens_map.json` overrides its named tokens: SD 2.1's
//!   `tokenizer_config.json` says `pad_token: "<|endoftext|>"`, its map says `"!"`, and the
//!   pipeline pads with `"!"`.
//! - The added tokens are `added_tokens_decoder` when present, else `tokenizer.json`'s
//!   `added_tokens`; a named token whose content is one of them takes its flags.
//! - A named token given as a plain string is special and not normalized; every named token is
//!   added to the tokenizer, so it is matched in the raw text before any normalisation (a `!`
//!   pad token splits `"!!"` into two `!` tokens, as transformers does).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::AddedToken;

use crate::error::{Error, Result};

/// transformers' `VERY_LARGE_INTEGER` stands for "no limit" in `model_max_length`; anything
/// this large is treated as absent.
const NO_LIMIT: u64 = 1 << 40;

/// Named special tokens in transformers' `SPECIAL_TOKENS_ATTRIBUTES` order (the order they
/// are added in).
const NAMED: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Reads and parses a JSON file, naming it in any error.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|error| Error::Json {
        path: path.to_path_buf(),
        error,
    })
}

/// An error about the contents of `path`.
pub(crate) fn bad(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {message}", path.display()))
}

/// The special tokens of a folder, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Specials {
    /// Named tokens by attribute (`"pad_token"` ...), with class defaults for missing ones.
    named: Vec<(&'static str, AddedToken)>,
    /// Every token to add to the tokenizer, in transformers' order.
    pub to_add: Vec<AddedToken>,
    /// `model_max_length`, when the config gives a real one.
    pub model_max_length: Option<usize>,
}

impl Specials {
    /// Resolves the folder `dir`'s special tokens. `file_added` is `tokenizer.json`'s
    /// `added_tokens` when the folder has one; `defaults` the class defaults
    /// (`("pad_token", "<|endoftext|>")` ...).
    pub fn read(
        dir: &Path,
        file_added: Option<(&Path, &Value)>,
        defaults: &[(&'static str, &str)],
    ) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = optional_object(&config_path)?;
        let mut added: Vec<(u64, AddedToken)> = Vec::new();
        let decoder = config.get("added_tokens_decoder");
        if let Some(decoder) = decoder {
            let entries = decoder
                .as_object()
                .ok_or_else(|| bad(&config_path, "added_tokens_decoder is not an object"))?;
            for (id, token) in entries {
                let id = id.parse::<u64>().map_err(|_| {
                    bad(
                        &config_path,
                        format!("added_tokens_decoder key {id:?} is not an id"),
                    )
                })?;
                added.push((id, parse_token(&config_path, token, false)?));
            }
        } else if let Some((path, list)) = file_added {
            let list = list
                .as_array()
                .ok_or_else(|| bad(path, "added_tokens is not a list"))?;
            for token in list {
                let id = token.get("id").and_then(Value::as_u64);
                let id = id.ok_or_else(|| bad(path, "an added token has no id"))?;
                added.push((id, parse_token(path, token, false)?));
            }
        }
        added.sort_by_key(|(id, _)| *id);

        let map_path = dir.join("special_tokens_map.json");
        let map = if decoder.is_none() {
            optional_object(&map_path)?
        } else {
            Map::new()
        };
        let mut named = Vec::new();
        for key in NAMED {
            let (path, value) = match (map.get(key), config.get(key)) {
                (Some(v), _) if !v.is_null() => (&map_path, v),
                (_, Some(v)) if !v.is_null() => (&config_path, v),
                _ => match defaults.iter().find(|(k, _)| *k == key) {
                    Some((_, d)) => (&config_path, &Value::String(d.to_string())),
                    None => continue,
                },
            };
            let token = parse_token(path, value, true)?;
            let token = match added.iter().find(|(_, t)| t.content == token.content) {
                Some((_, t)) => AddedToken {
                    special: true,
                    ..t.clone()
                },
                None => token,
            };
            named.push((key, token));
        }

        let mut to_add: Vec<AddedToken> = added.into_iter().map(|(_, t)| t).collect();
        let extra = ["additional_special_tokens", "extra_special_tokens"]
            .iter()
            .filter_map(|k| config.get(*k).and_then(Value::as_array))
            .flatten()
            .map(|v| parse_token(&config_path, v, true))
            .collect::<Result<Vec<_>>>()?;
        for token in named.iter().map(|(_, t)| t.clone()).chain(extra) {
            if !to_add.iter().any(|t| t.content == token.content) {
                to_add.push(token);
            }
        }
        let model_max_length = match config.get("model_max_length") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(n) if n >= NO_LIMIT as f64 => None,
                Some(n) if n >= 1.0 && n.fract() == 0.0 => Some(n as usize),
                _ => {
                    return Err(bad(
                        &config_path,
                        format!("model_max_length {v} is not a length"),
                    ));
                }
            },
        };
        Ok(Specials {
            named,
            to_add,
            model_max_length,
        })
    }

    /// The content of named token `key` (`"pad_token"` ...), if the folder or the defaults
    /// have one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, t)| t.content.as_str())
    }
}

/// The object in `path`, or an empty one when the file does not exist.
fn optional_object(path: &Path) -> Result<Map<String, Value>> {
    if !path.exists() {
        return Ok(Map::new());
    }
    match read_json(path)? {
        Value::Object(map) => Ok(map),
        _ => Err(bad(path, "not a JSON object")),
    }
}

/// A token given as a string or an `AddedToken` dict. `named`: it is a named special token
/// (always special; a plain string is then not normalized, as transformers' `AddedToken(s,
/// special=True)`).
fn parse_token(path: &Path, value: &Value, named: bool) -> Result<AddedToken> {
    match value {
        Value::String(s) => Ok(AddedToken::from(s.clone(), named)),
        Value::Object(d) => {
            let content = d.get("content").and_then(Value::as_str);
            let content =
                content.ok_or_else(|| bad(path, format!("token {value} has no content")))?;
            let flag = |k: &str| d.get(k).and_then(Value::as_bool);
            let special = named || flag("special").unwrap_or(false);
            Ok(AddedToken::from(content.to_string(), special)
                .single_word(flag("single_word").unwrap_or(false))
                .lstrip(flag("lstrip").unwrap_or(false))
                .rstrip(flag("rstrip").unwrap_or(false))
                .normalized(flag("normalized").unwrap_or(!special)))
        }
        _ => Err(bad(
            path,
            format!("token {value} is neither a string nor a dict"),
        )),
    }
}

/// `dir/name`, which must exist.
pub(crate) fn required(dir: &Path, name: &str, what: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingFile(format!(
            "{}: no {name} ({what})",
            dir.display()
        )))
    }
}
