//! Loading transformers checkpoints (`model.safetensors`, its `fp16` variant or shards with
//! `model.safetensors.index.json`) into the text encoders, through the crate's one loader.
//!
//! Module paths equal the keys of the published SD checkpoints, so loading is by name with the
//! rules of [`crate::weights::keys`]. Three differences between transformers versions are
//! absorbed here, per model ([`TransformersModel`]):
//! 1. CLIP's `text_model.embeddings.position_ids` is an int64 buffer that transformers before
//!    4.31 saved (SD 2.1's file has it); it is not a weight and is skipped;
//! 2. transformers 5 saves `CLIPTextModel` without the `text_model.` prefix (its
//!    `PrefixChange(prefix_to_remove="text_model")` conversion); a file where no key has the
//!    prefix gets it added;
//! 3. T5's `shared.weight` and `encoder.embed_tokens.weight` are one tied tensor: a file may
//!    hold either or both; `encoder.embed_tokens.weight` loads as `shared.weight` when that is
//!    absent and is dropped otherwise (transformers ties it to `shared` either way).
//!
//! Everything else is strict, as in [`crate::weights::load_files`]: missing, unexpected and
//! mis-shaped keys are errors naming the key.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;

use super::clip::{ClipTextModel, ClipTextModelWithProjection};
use super::t5::T5EncoderModel;
use crate::error::{Error, Result};
use crate::weights::{CheckpointFiles, LoadReport, load_tensors, read_tensors_except};

/// A model stored as a transformers checkpoint, with its version differences in key names.
pub trait TransformersModel<B: Backend>: Module<B> {
    /// Whether the file's `key` is not a weight (a saved buffer) and is skipped unread.
    fn ignored(_key: &str) -> bool {
        false
    }

    /// The key the file's `key` loads as (`keys`: all the file's weight keys), `None` to drop
    /// a duplicate.
    fn rename(key: &str, _keys: &HashSet<String>) -> Option<String> {
        Some(key.to_string())
    }
}

fn is_position_ids(key: &str) -> bool {
    key.ends_with("embeddings.position_ids")
}

impl<B: Backend> TransformersModel<B> for ClipTextModel<B> {
    fn ignored(key: &str) -> bool {
        is_position_ids(key)
    }

    fn rename(key: &str, keys: &HashSet<String>) -> Option<String> {
        match keys.iter().any(|k| k.starts_with("text_model.")) {
            true => Some(key.to_string()),
            false => Some(format!("text_model.{key}")),
        }
    }
}

impl<B: Backend> TransformersModel<B> for ClipTextModelWithProjection<B> {
    fn ignored(key: &str) -> bool {
        is_position_ids(key)
    }
}

impl<B: Backend> TransformersModel<B> for T5EncoderModel<B> {
    fn rename(key: &str, keys: &HashSet<String>) -> Option<String> {
        match key {
            "encoder.embed_tokens.weight" if keys.contains("shared.weight") => None,
            "encoder.embed_tokens.weight" => Some("shared.weight".to_string()),
            _ => Some(key.to_string()),
        }
    }
}

/// Loads a transformers model folder (e.g. `text_encoder/`) into `module`.
///
/// `variant` picks `model.<variant>.safetensors` (e.g. `Some("fp16")`); with `None` the plain
/// file is used, else the `fp16` variant if it is the only one present. f16/bf16 weights are
/// cast to the backend's float type.
pub fn load_transformers<B: Backend, M: TransformersModel<B>>(
    module: M,
    folder: &Path,
    variant: Option<&str>,
) -> Result<(M, LoadReport)> {
    let files = CheckpointFiles::resolve(folder, "model", variant)?;
    load_transformers_files(module, &files)
}

/// [`load_transformers`] from explicit checkpoint files.
pub fn load_transformers_files<B: Backend, M: TransformersModel<B>>(
    module: M,
    files: &CheckpointFiles,
) -> Result<(M, LoadReport)> {
    let tensors = read_tensors_except(files, &|k| M::ignored(k))?;
    let keys: HashSet<String> = tensors.keys().cloned().collect();
    let mut renamed = HashMap::with_capacity(tensors.len());
    for (key, tensor) in tensors {
        let Some(ours) = M::rename(&key, &keys) else {
            continue;
        };
        if renamed.contains_key(&ours) {
            return Err(Error::Weights(format!(
                "{}: keys {key} and {ours} both load as {ours}",
                files.describe()
            )));
        }
        renamed.insert(ours, tensor);
    }
    load_tensors(module, renamed, files)
}
