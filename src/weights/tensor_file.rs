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
    /// Reads every tensor of `path`: floats (f32, f16, bf16, f64) and integers exact in f32
    /// (diffusers' and PyTorch's `torch.long` timesteps, say); other dtypes, and integers
    /// beyond 2^24, are an error naming the tensor.
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
            let values = decode_values(view.dtype(), view.data())
                .map_err(|e| bad(format!("tensor {name}: {e}")))?;
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

/// A model input's bytes as f32 values: [`decode_f32`]'s floats, and little-endian integers
/// whose values f32 holds exactly (|v| <= 2^24).
fn decode_values(dtype: Dtype, raw: &[u8]) -> std::result::Result<Vec<f32>, String> {
    if let Some(values) = decode_f32(dtype, raw) {
        return Ok(values);
    }
    const EXACT: i128 = 1 << 24;
    let ints: Vec<i128> = match dtype {
        Dtype::I64 => le::<8>(raw).map(|b| i64::from_le_bytes(b).into()).collect(),
        Dtype::I32 => le::<4>(raw).map(|b| i32::from_le_bytes(b).into()).collect(),
        Dtype::I16 => le::<2>(raw).map(|b| i16::from_le_bytes(b).into()).collect(),
        Dtype::I8 => raw.iter().map(|&b| (b as i8).into()).collect(),
        Dtype::U64 => le::<8>(raw).map(|b| u64::from_le_bytes(b).into()).collect(),
        Dtype::U32 => le::<4>(raw).map(|b| u32::from_le_bytes(b).into()).collect(),
        Dtype::U16 => le::<2>(raw).map(|b| u16::from_le_bytes(b).into()).collect(),
        Dtype::U8 => raw.iter().map(|&b| b.into()).collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is neither a float (F32, F16, BF16, F64) nor an integer type"
            ));
        }
    };
    if let Some((i, v)) = ints.iter().enumerate().find(|(_, v)| v.abs() > EXACT) {
        return Err(format!(
            "{dtype:?} value {v} at flat index {i} is not exact in f32 (|v| <= 2^24 are)"
        ));
    }
    Ok(ints.into_iter().map(|v| v as f32).collect())
}

/// `raw` in little-endian chunks of `N` bytes.
fn le<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N)
        .map(|c| <[u8; N]>::try_from(c).expect("chunks_exact yields N bytes"))
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
    let mut serialized =
        safetensors::serialize(views, metadata).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let header = canonical_header(&serialized, path)?;
    serialized[8..8 + header.len()].copy_from_slice(&header);
    write_atomic(path, &serialized)
}

/// The JSON header of safetensors `bytes` with every object's keys sorted and padded with
/// spaces to its old length, so that the same tensors always give the same bytes: writers keep
/// the metadata in a `HashMap`, whose order changes from one process to the next.
fn canonical_header(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let bad = |message: String| Error::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .filter(|&n| n <= bytes.len() - 8)
        .ok_or_else(|| bad("truncated header".into()))?;
    let header: BTreeMap<String, BTreeMap<String, serde_json::Value>> =
        serde_json::from_slice(&bytes[8..8 + len]).map_err(|e| bad(e.to_string()))?;
    let mut canonical = serde_json::to_vec(&header).map_err(|e| bad(e.to_string()))?;
    if canonical.len() > len {
        return Err(bad(format!(
            "the sorted header is longer ({} bytes) than the written one ({len})",
            canonical.len()
        )));
    }
    canonical.resize(len, b' ');
    Ok(canonical)
}

/// Rewrites the header of the safetensors file at `path` in place with sorted keys (see
/// [`write_tensor_file`]); the tensor bytes are not read.
pub fn canonicalize_safetensors(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let io = |e| Error::io(path, e);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let size = file.metadata().map_err(io)?.len() as usize;
    let mut head = [0u8; 8];
    file.read_exact(&mut head).map_err(io)?;
    let len = (u64::from_le_bytes(head) as usize).min(size.saturating_sub(8));
    let mut bytes = head.to_vec();
    bytes.resize(8 + len, 0);
    file.read_exact(&mut bytes[8..]).map_err(io)?;
    let header = canonical_header(&bytes, path)?;
    file.seek(SeekFrom::Start(8)).map_err(io)?;
    file.write_all(&header).map_err(io)?;
    file.sync_all().map_err(io)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `(name, dtype, shape, bytes)` tensors to a safetensors file `name` in the
    /// temporary folder (one per test and process).
    fn file(name: &str, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> std::path::PathBuf {
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(k, d, s, b)| (k.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let path = std::env::temp_dir().join(format!("ctcal-{}-{name}", std::process::id()));
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        path
    }

    /// The same tensors and metadata give the same bytes, whatever order the metadata map
    /// iterates in (a new `HashMap` per write); the file still reads back.
    #[test]
    fn written_files_are_byte_identical() {
        let tensors: BTreeMap<String, TensorEntry> = [
            ("b".to_string(), (vec![2], vec![1.0, 2.0])),
            ("a".to_string(), (vec![1, 1], vec![3.0])),
        ]
        .into();
        let path = std::env::temp_dir().join(format!("ctcal-{}-canon", std::process::id()));
        let write = || {
            let meta: HashMap<String, String> = (0..6)
                .map(|i| (format!("key{i}"), format!("value{i}")))
                .collect();
            write_tensor_file(&path, &tensors, Some(meta)).unwrap();
            std::fs::read(&path).unwrap()
        };
        let first = write();
        for _ in 0..8 {
            assert!(write() == first, "bytes differ between two writes");
        }
        let read = TensorFile::read(&path).unwrap();
        assert_eq!(read.tensors, tensors);
        let text = String::from_utf8_lossy(&first[8..100]).to_string();
        assert!(
            text.starts_with(r#"{"__metadata__":{"key0":"value0","key1""#),
            "{text}"
        );
        // In place on a file written by another writer (burn-store's path).
        let meta: HashMap<String, String> =
            [("z".into(), "1".into()), ("y".into(), "2".into())].into();
        let views = vec![(
            "t",
            TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap(),
        )];
        std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
        canonicalize_safetensors(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(r#"{"__metadata__":{"y":"2","z":"1"}"#));
        assert!(TensorFile::read(&path).is_ok());
        let _ = std::fs::remove_file(&path);
    }

    /// diffusers' inputs: a `torch.long` timestep beside f32 latents are read as floats.
    #[test]
    fn integer_timesteps_are_read_as_floats() {
        let steps: Vec<u8> = [999i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let small: Vec<u8> = [-3i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let latents: Vec<u8> = [0.5f32, -1.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let path = file(
            "ints.safetensors",
            &[
                ("timestep", Dtype::I64, vec![2], steps),
                ("small", Dtype::I32, vec![2], small),
                ("bytes", Dtype::U8, vec![2], vec![0, 255]),
                ("latents", Dtype::F32, vec![1, 2], latents),
            ],
        );
        let f = TensorFile::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(f.tensors["timestep"], (vec![2], vec![999.0, 0.0]));
        assert_eq!(f.tensors["small"], (vec![2], vec![-3.0, 7.0]));
        assert_eq!(f.tensors["bytes"], (vec![2], vec![0.0, 255.0]));
        assert_eq!(f.tensors["latents"], (vec![1, 2], vec![0.5, -1.25]));
    }

    /// Integers f32 cannot hold and non-numeric dtypes are errors naming the tensor, the
    /// dtype and what would have been accepted.
    #[test]
    fn inexact_integers_and_booleans_are_named() {
        let big: Vec<u8> = [1i64, (1 << 24) + 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let read = |name: &str, t: (&str, Dtype, Vec<usize>, Vec<u8>)| {
            let path = file(name, &[t]);
            let e = TensorFile::read(&path).unwrap_err().to_string();
            let _ = std::fs::remove_file(&path);
            e
        };
        let e = read("big.safetensors", ("ids", Dtype::I64, vec![2], big));
        assert!(
            e.contains("tensor ids") && e.contains("16777217") && e.contains("index 1"),
            "{e}"
        );
        let e = read(
            "bool.safetensors",
            ("mask", Dtype::BOOL, vec![2], vec![0, 1]),
        );
        assert!(
            e.contains("tensor mask") && e.contains("BOOL") && e.contains("F32"),
            "{e}"
        );
    }
}
