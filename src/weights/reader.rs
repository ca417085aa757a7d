//! Finding and parsing the safetensors files of a diffusers model folder.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::tensor::{DType, TensorData};
use burn_store::TensorSnapshotError;
use safetensors::{Dtype, SafeTensors};

use super::tensor_file::decode_f32;
use crate::config::ConfigFile;
use crate::error::{Error, Result};

/// The files holding one model's weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFiles {
    /// The safetensors files (one, or the shards an index names).
    pub paths: Vec<PathBuf>,
    /// The shard index, when there is one.
    pub index: Option<PathBuf>,
}

impl CheckpointFiles {
    /// Finds `<stem>[.<variant>].safetensors` or its shard index
    /// `<stem>.safetensors.index[.<variant>].json` in `folder`.
    ///
    /// With `variant = None`, the plain files are tried first and then the `fp16` variant.
    pub fn resolve(folder: &Path, stem: &str, variant: Option<&str>) -> Result<Self> {
        if !folder.is_dir() {
            return Err(Error::MissingFile(format!(
                "{}: not a directory (expected a diffusers model folder)",
                folder.display()
            )));
        }
        let variants: Vec<Option<&str>> = match variant {
            Some(v) => vec![Some(v)],
            None => vec![None, Some("fp16")],
        };
        let mut tried = Vec::new();
        for v in variants {
            let (single, index) = match v {
                None => (
                    format!("{stem}.safetensors"),
                    format!("{stem}.safetensors.index.json"),
                ),
                Some(v) => (
                    format!("{stem}.{v}.safetensors"),
                    format!("{stem}.safetensors.index.{v}.json"),
                ),
            };
            let single_path = folder.join(&single);
            if single_path.is_file() {
                return Ok(Self {
                    paths: vec![single_path],
                    index: None,
                });
            }
            let index_path = folder.join(&index);
            if index_path.is_file() {
                return Self::from_index(&index_path);
            }
            tried.push(single);
            tried.push(index);
        }
        Err(Error::MissingFile(format!(
            "{}: no weights found (looked for {})",
            folder.display(),
            tried.join(", ")
        )))
    }

    /// A single safetensors file.
    pub fn single(path: impl Into<PathBuf>) -> Self {
        Self {
            paths: vec![path.into()],
            index: None,
        }
    }

    /// The shards listed in a `*.safetensors.index.json` (paths relative to the index).
    pub fn from_index(index: &Path) -> Result<Self> {
        let file = ConfigFile::read(index)?;
        let map = file
            .fields()
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Error::MissingFile(format!("{}: no \"weight_map\" object", index.display()))
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut paths: Vec<PathBuf> = Vec::new();
        for (key, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::MissingFile(format!(
                    "{}: weight_map[{key:?}] is not a file name",
                    index.display()
                ))
            })?;
            let path = dir.join(file);
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        paths.sort();
        Ok(Self {
            paths,
            index: Some(index.to_path_buf()),
        })
    }

    /// The index file, or the single file, for messages.
    pub fn describe(&self) -> String {
        match (&self.index, self.paths.as_slice()) {
            (Some(index), _) => index.display().to_string(),
            (None, [one]) => one.display().to_string(),
            (None, many) => format!("{} files", many.len()),
        }
    }
}

/// One tensor of a safetensors file, read on demand.
#[derive(Clone)]
pub(crate) struct LazyTensor {
    pub file: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    bytes: Rc<Vec<u8>>,
    range: Range<usize>,
}

impl LazyTensor {
    /// The tensor as `TensorData` of dtype `target` (f16/bf16/f64 are cast).
    pub fn to_data(&self, target: DType) -> std::result::Result<TensorData, TensorSnapshotError> {
        let raw = &self.bytes[self.range.clone()];
        let values = decode_f32(self.dtype, raw).ok_or_else(|| {
            TensorSnapshotError::DataError(format!(
                "{}: unsupported dtype {:?}",
                self.file, self.dtype
            ))
        })?;
        let data = TensorData::new(values, self.shape.clone());
        Ok(if target == DType::F32 {
            data
        } else {
            data.convert_dtype(target)
        })
    }
}

/// Reads every tensor header of `files`, keyed by name; data are decoded lazily.
///
/// Truncated or malformed files, non-float dtypes, keys present in two shards and keys the
/// index promises but the shard lacks are errors naming the file and key.
pub(crate) fn read_tensors(files: &CheckpointFiles) -> Result<HashMap<String, LazyTensor>> {
    read_tensors_except(files, &|_| false)
}

/// [`read_tensors`] leaving out the keys `skip` names (whatever their dtype): buffers such as
/// the int64 `position_ids` older transformers versions saved into CLIP checkpoints.
pub(crate) fn read_tensors_except(
    files: &CheckpointFiles,
    skip: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, LazyTensor>> {
    let mut out = HashMap::new();
    for path in &files.paths {
        let bytes = Rc::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let base = bytes.as_ptr() as usize;
        let file = path.display().to_string();
        for (name, view) in st.tensors() {
            if skip(&name) {
                continue;
            }
            if !matches!(
                view.dtype(),
                Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
            ) {
                return Err(Error::Weights(format!(
                    "{file}: tensor {name} has dtype {:?}; only float weights are supported",
                    view.dtype()
                )));
            }
            let start = view.data().as_ptr() as usize - base;
            let tensor = LazyTensor {
                file: file.clone(),
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                bytes: bytes.clone(),
                range: start..start + view.data().len(),
            };
            if out.insert(name.clone(), tensor).is_some() {
                return Err(Error::Weights(format!(
                    "{file}: tensor {name} appears in more than one shard"
                )));
            }
        }
    }
    if let Some(index) = &files.index {
        check_index(index, &out, skip)?;
    }
    Ok(out)
}

fn check_index(
    index: &Path,
    tensors: &HashMap<String, LazyTensor>,
    skip: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let file = ConfigFile::read(index)?;
    if let Some(map) = file.fields().get("weight_map").and_then(|m| m.as_object()) {
        for (key, file) in map {
            if !skip(key) && !tensors.contains_key(key) {
                return Err(Error::Weights(format!(
                    "{}: key {key} is listed for {} but that shard does not hold it",
                    index.display(),
                    file.as_str().unwrap_or("?")
                )));
            }
        }
    }
    Ok(())
}
