//! Plain named-tensor safetensors files: model inputs, outputs and captured maps.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::{Error, Result};

/// A tensor as plain data: `(shape, values)` in row-major order.
pub type TensorEntry = (Vec<usize>, Vec<f32>);

/// The float tensors of one safetensors file, decoded to f32, with the file's metadata.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    /// Where it was read from (for messages).
    pub path: String,
    /// Name to `(shape, values)`.
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The `__metadata__` strings.
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Reads every tensor of `path` (f32, f16, bf16 or f64; other dtypes are an error naming
    /// the tensor).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let values = decode_f32(view.dtype(), view.data()).ok_or_else(|| {
                bad(format!(
                    "tensor {name} has unsupported dtype {:?}",
                    view.dtype()
                ))
            })?;
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Self {
            path: path.display().to_string(),
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
        })
    }

    /// The tensor `name` on `device`, checked to have `D` dimensions.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let (shape, values) = self.tensors.get(name).ok_or_else(|| {
            let have: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
            Error::Input(format!(
                "{}: no tensor named {name:?} (it has: {})",
                self.path,
                have.join(", ")
            ))
        })?;
        if shape.len() != D {
            return Err(Error::Input(format!(
                "{}: tensor {name:?} has shape {shape:?}, expected {D} dimensions",
                self.path
            )));
        }
        Ok(Tensor::from_data(
            TensorData::new(values.clone(), shape.clone()),
            device,
        ))
    }
}

/// Little-endian f32, f16, bf16 or f64 bytes as f32 values; `None` for other dtypes.
pub(crate) fn decode_f32(dtype: Dtype, raw: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    })
}

/// Writes f32 tensors to `path` atomically: a temporary file beside it, then a rename, so an
/// interrupted write never leaves a truncated file behind.
pub fn write_tensor_file(
    path: &Path,
    tensors: &BTreeMap<String, TensorEntry>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, (shape, v))| {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), b, shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::Input(format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let serialized = safetensors::serialize(views, metadata).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &serialized)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A tensor's shape and f32 values, for [`write_tensor_file`].
pub fn to_entry<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> TensorEntry {
    let data = tensor.into_data().convert::<f32>();
    let shape = data.shape.to_vec();
    let values = data.to_vec::<f32>().unwrap_or_default();
    (shape, values)
}
