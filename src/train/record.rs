//! The optimisers' state in a checkpoint: burn's AdamW records in its named MessagePack
//! format (`NamedMpkFileRecorder`, full precision), rewritten with every map sorted by key.
//! burn keeps the per-parameter states in a `HashMap`, whose order changes from process to
//! process, so two identical runs would otherwise write different bytes.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use rmpv::Value;

use crate::error::{Error, Result};

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// Writes `optim`'s state to `path` + `.mpk`, maps sorted.
pub(crate) fn save_optimizer<B, M, O>(optim: &O, path: &Path) -> Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    recorder()
        .record(optim.to_record(), path.to_path_buf())
        .map_err(|e| write_err(path, e))?;
    canonicalize(&mpk(path)).map_err(|e| write_err(path, e))
}

/// Reads the state [`save_optimizer`] wrote to `path` + `.mpk` into `optim`.
pub(crate) fn load_optimizer<B, M, O>(optim: O, path: &Path, device: &B::Device) -> Result<O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let record = recorder()
        .load(path.to_path_buf(), device)
        .map_err(|e| read_err(path, e))?;
    Ok(optim.load_record(record))
}

fn mpk(path: &Path) -> PathBuf {
    path.with_extension("mpk")
}

/// Rewrites the MessagePack file at `path` with every map's entries sorted by their encoded
/// key; readers of named records do not depend on the order.
fn canonicalize(path: &Path) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut value = rmpv::decode::read_value(&mut bytes.as_slice()).map_err(|e| e.to_string())?;
    sort_maps(&mut value);
    let mut out = Vec::with_capacity(bytes.len());
    rmpv::encode::write_value(&mut out, &value).map_err(|e| e.to_string())?;
    std::fs::write(path, out).map_err(|e| e.to_string())
}

fn sort_maps(value: &mut Value) {
    match value {
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                sort_maps(k);
                sort_maps(v);
            }
            entries.sort_by_cached_key(|(k, _)| {
                let mut key = Vec::new();
                // Writing into a Vec cannot fail.
                let _ = rmpv::encode::write_value(&mut key, k);
                key
            });
        }
        Value::Array(items) => items.iter_mut().for_each(sort_maps),
        _ => {}
    }
}

/// An optimiser state that does not decode: burn's message blames a version mismatch for any
/// bad bytes, so say what else it may be.
fn read_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Weights(format!(
        "{}: cannot read the optimiser state ({e}); the file is damaged (truncated?) or was \
         written by another burn version; resume from an older checkpoint or start afresh",
        mpk(path).display()
    ))
}

/// burn reports a failed write of the optimiser record as a MessagePack error whatever the
/// cause; the usual cause is a full disk.
fn write_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Weights(format!(
        "{}: writing the optimiser state failed ({e}); is the disk full? The previous \
         checkpoint is intact",
        mpk(path).display()
    ))
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use crate::calibration::{MapAutoEncoder, MapAutoEncoderConfig};
    use crate::train::stable_ids;
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::{Distribution, Tensor};

    type Ad = burn::backend::Autodiff<burn_ndarray::NdArray<f32>>;

    /// An auto-encoder and its AdamW after one step on a fixed input; each call builds its
    /// own optimiser, so its `HashMap` iterates in its own order.
    fn stepped() -> (MapAutoEncoder<Ad>, impl Optimizer<MapAutoEncoder<Ad>, Ad>) {
        let device = Default::default();
        <Ad as burn::tensor::backend::Backend>::seed(&device, 7);
        let ae: MapAutoEncoder<Ad> =
            stable_ids(MapAutoEncoderConfig::new().init(&device), "autoencoder");
        let mut optim = AdamWConfig::new().init::<Ad, MapAutoEncoder<Ad>>();
        let maps = Tensor::<Ad, 4>::random([2, 1, 16, 16], Distribution::Default, &device);
        let loss = (ae.decode(ae.encode(maps.clone())) - maps)
            .powi_scalar(2)
            .mean();
        let grads = GradientsParams::from_grads(loss.backward(), &ae);
        let ae = optim.step(1e-3, ae, grads);
        (ae, optim)
    }

    #[test]
    fn the_same_state_gives_the_same_bytes_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("ctcal-optim-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ae, first) = stepped();
        let (_, second) = stepped();
        save_optimizer(&first, &dir.join("a")).unwrap();
        save_optimizer(&second, &dir.join("b")).unwrap();
        let a = std::fs::read(dir.join("a.mpk")).unwrap();
        assert_eq!(a, std::fs::read(dir.join("b.mpk")).unwrap());

        // Read back, the state steps exactly as the one kept in memory.
        let fresh = AdamWConfig::new().init::<Ad, MapAutoEncoder<Ad>>();
        let loaded = load_optimizer(fresh, &dir.join("a"), &Default::default()).unwrap();
        save_optimizer(&loaded, &dir.join("c")).unwrap();
        assert_eq!(a, std::fs::read(dir.join("c.mpk")).unwrap());

        std::fs::write(dir.join("a.mpk"), &a[..a.len() / 2]).unwrap();
        let fresh = AdamWConfig::new().init::<Ad, MapAutoEncoder<Ad>>();
        let msg = load_optimizer(fresh, &dir.join("a"), &Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("a.mpk") && msg.contains("truncated"), "{msg}");
        drop(ae);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
