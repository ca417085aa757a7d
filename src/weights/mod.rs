//! Loading diffusers safetensors checkpoints into our modules, by key name.
//!
//! One loader serves every model: build the module with its config's `init`, then
//! [`load_module`] reads a diffusers model folder (single file, `.fp16` variant, or shards with a
//! `*.safetensors.index.json`), casts f16/bf16/f64 to the backend's float type, maps keys with
//! the rules of [`keys`] (renaming pre-0.14 attention-block keys), checks that the file and the module agree key for key and shape for
//! shape, and hands the tensors to burn-store's applier with its PyTorch-to-burn adapter
//! (which transposes `Linear` weights).
//!
//! These are base weights: LoRA adapter parameters (`lora_a`/`lora_b` of a
//! [`LoraLinear`](crate::lora::LoraLinear)) are neither expected nor touched, so a base
//! checkpoint loads the same into a model with or without adapters; adapters load with
//! [`crate::lora::import_peft`], and a checkpoint holding `lora_A`/`lora_B` keys is rejected
//! here as unexpected.
//!
//! Why not `SafetensorsStore` directly: it reads one file (no shard index), keeps f16 tensors
//! as f16 (which aborts on ndarray), and reports norm weights found through its alternative
//! name lookup as unused; so we parse the files with the `safetensors` crate and feed burn-store
//! `TensorSnapshot`s ourselves. Missing, unexpected and mis-shaped keys are errors, never
//! ignored.

mod expected;
pub mod keys;
mod reader;
mod save;
mod tensor_file;

pub use expected::{ExpectedTensor, expected_tensors};
pub use keys::{is_adapter_path, to_diffusers_key};
pub use reader::CheckpointFiles;
pub(crate) use reader::{read_tensors, read_tensors_except};
pub use save::{WEIGHTS_FILE, diffusers_tensors, save_diffusers};
pub use tensor_file::{
    TensorEntry, TensorFile, canonicalize_safetensors, to_entry, write_atomic, write_tensor_file,
};

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ParamId};
use burn::tensor::{DType, Element, backend::Backend};
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, TensorSnapshot};

use crate::error::{Error, Result};
pub(crate) use reader::LazyTensor;

/// What a successful load did, for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Files read.
    pub files: Vec<String>,
    /// Number of tensors loaded.
    pub tensors: usize,
    /// The dtypes found in the files, by name, before casting.
    pub source_dtypes: Vec<String>,
}

/// Loads the weights of a diffusers model folder (e.g. `unet/`) into `module`.
///
/// `variant` picks `diffusion_pytorch_model.<variant>.safetensors` (e.g. `Some("fp16")`);
/// with `None` the plain file is used, else the `fp16` variant if it is the only one present.
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    folder: &Path,
    variant: Option<&str>,
) -> Result<(M, LoadReport)> {
    let files = CheckpointFiles::resolve(folder, "diffusion_pytorch_model", variant)?;
    load_files(module, &files)
}

/// Loads `module` from explicit checkpoint files (see [`CheckpointFiles`]).
pub fn load_files<B: Backend, M: Module<B>>(
    module: M,
    files: &CheckpointFiles,
) -> Result<(M, LoadReport)> {
    load_tensors(module, read_tensors(files)?, files)
}

/// Loads `module` from tensors already read from `files` (keys possibly renamed by a
/// model-specific rule, e.g. [`crate::text::load_transformers`]); `files` names them in
/// messages and the report.
pub(crate) fn load_tensors<B: Backend, M: Module<B>>(
    mut module: M,
    mut tensors: std::collections::HashMap<String, LazyTensor>,
    files: &CheckpointFiles,
) -> Result<(M, LoadReport)> {
    // Pre-0.14 attention-block names (see `keys`), unless the current name is also present.
    let legacy: Vec<(String, String)> = tensors
        .keys()
        .filter_map(|k| keys::legacy_attention_key(k).map(|new| (k.clone(), new)))
        .filter(|(_, new)| !tensors.contains_key(new))
        .collect();
    for (old, new) in legacy {
        if let Some(tensor) = tensors.remove(&old) {
            tensors.insert(new, tensor);
        }
    }
    let target: DType = <B::FloatElem as Element>::dtype();

    // 1. Match our paths against the file's keys (without initialising the module's weights).
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut snapshots = Vec::new();
    let mut source_dtypes = BTreeMap::new();
    for expected in expected_tensors(&module) {
        if is_adapter_path(&expected.path) {
            continue; // Adapters are not base weights (see the module docs).
        }
        let Some(tensor) = tensors.remove(&expected.key) else {
            missing.push(expected.key);
            continue;
        };
        if tensor.shape != expected.shape {
            mismatched.push(format!(
                "{} has shape {:?} in {}, the model expects {:?}",
                expected.key, tensor.shape, tensor.file, expected.shape
            ));
            continue;
        }
        *source_dtypes
            .entry(format!("{:?}", tensor.dtype))
            .or_insert(0) += 1;
        snapshots.push(tensor.into_snapshot(&expected.path, target));
    }
    let unexpected: Vec<String> = {
        let mut v: Vec<String> = tensors.into_keys().collect();
        v.sort();
        v
    };
    if !(missing.is_empty() && mismatched.is_empty() && unexpected.is_empty()) {
        return Err(Error::Weights(mismatch_message(
            files,
            &missing,
            &mismatched,
            &unexpected,
        )));
    }

    // 2. Apply through burn-store (it transposes Linear weights).
    let count = snapshots.len();
    let result = module.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    let missing: Vec<&String> = result
        .missing
        .iter()
        .map(|(p, _)| p)
        .filter(|p| !is_adapter_path(p))
        .collect();
    if !result.errors.is_empty() || !missing.is_empty() || !result.unused.is_empty() {
        let first = result
            .errors
            .first()
            .map(|e| e.to_string())
            .or_else(|| missing.first().map(|p| format!("missing {p}")))
            .or_else(|| result.unused.first().map(|p| format!("unused {p}")))
            .unwrap_or_default();
        return Err(Error::Weights(format!(
            "{}: applying weights failed: {first}",
            files.describe()
        )));
    }
    let report = LoadReport {
        files: files
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        tensors: count,
        source_dtypes: source_dtypes.into_keys().collect(),
    };
    Ok((module, report))
}

/// The diffusers keys and shapes a module expects, sorted by key (PyTorch layout).
pub fn expected_keys<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut keys: Vec<(String, Vec<usize>)> = expected_tensors(module)
        .into_iter()
        .map(|e| (e.key, e.shape))
        .collect();
    keys.sort();
    keys
}

fn mismatch_message(
    files: &CheckpointFiles,
    missing: &[String],
    mismatched: &[String],
    unexpected: &[String],
) -> String {
    fn list(items: &[String]) -> String {
        let shown: Vec<&str> = items.iter().take(3).map(String::as_str).collect();
        let more = items.len().saturating_sub(3);
        if more > 0 {
            format!("{} (and {more} more)", shown.join(", "))
        } else {
            shown.join(", ")
        }
    }
    let mut parts = Vec::new();
    if !mismatched.is_empty() {
        parts.push(format!("wrong shape: {}", list(mismatched)));
    }
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing key(s): {}",
            missing.len(),
            list(missing)
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected key(s): {}",
            unexpected.len(),
            list(unexpected)
        ));
    }
    format!("{}: {}", files.describe(), parts.join("; "))
}

impl LazyTensor {
    fn into_snapshot(self, path: &str, target: DType) -> TensorSnapshot {
        let shape = self.shape.clone();
        let path_stack: Vec<String> = path.split('.').map(str::to_string).collect();
        let data_fn = std::rc::Rc::new(move || self.to_data(target));
        TensorSnapshot::from_closure(
            data_fn,
            target,
            shape.into(),
            path_stack,
            Vec::new(),
            ParamId::new(),
        )
    }
}
