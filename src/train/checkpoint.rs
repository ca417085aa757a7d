//! Crash-safe checkpoints: everything a resumed run needs to continue bit for bit.
//!
//! A checkpoint is a folder `checkpoints/step-0000100/` holding
//! - `state.json`: step, data cursor, the [`TrainConfig`], what is trained and the data's
//!   fingerprint;
//! - `trained.safetensors`: the denoiser's trained parameters (LoRA adapters, or every
//!   weight when fine-tuning fully), by burn module path;
//! - `autoencoder.safetensors`: the CTCal map auto-encoder;
//! - `ema.safetensors` when an EMA is kept;
//! - `pytorch_lora_weights.safetensors` in a LoRA run: the adapters at that step (the EMA's
//!   when kept) in the layout diffusers' `load_lora_weights` reads, as diffusers' scripts save
//!   with each checkpoint;
//! - `config.toml`: the run's resolved settings ([`super::render`]), which `--resume` reads;
//! - `optimizer.mpk`, `optimizer_ae.mpk`: burn's AdamW records (full precision, maps sorted:
//!   so the same state gives the same bytes), and `optimizer_text.mpk` when text encoders
//!   train at their own learning rate.
//!
//! It is written to a temporary folder that is renamed into place, then `checkpoints/latest`
//! is replaced atomically: a crash at any moment leaves the previous checkpoint intact. The
//! randomness of step `k` is derived from `(seed, k)` (see [`super::step_seed`]), so no RNG
//! state needs saving.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::tensor::backend::{AutodiffBackend, Backend};
use std::rc::Rc;

use burn::tensor::DType;
use burn_store::{ModuleAdapter, ModuleSnapshot, SafetensorsStore, TensorSnapshot};
use serde::{Deserialize, Serialize};

use super::TrainConfig;
use super::record::{load_optimizer, save_optimizer};
use super::settings::is_variant;
use crate::data::{DataCursor, DataFingerprint};
use crate::error::{Error, Result};
use crate::weights::{
    CheckpointFiles, canonicalize_safetensors, expected_tensors, read_tensors, write_atomic,
};

/// Which parameters of the denoiser are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trained {
    /// Only LoRA adapters (`lora_a` / `lora_b`).
    Lora,
    /// Every weight.
    Full,
}

impl Trained {
    /// The burn-store path filter selecting the trained parameters.
    pub fn filter(self) -> fn(&str, &str) -> bool {
        match self {
            Trained::Lora => |path, _| crate::weights::is_adapter_path(path),
            Trained::Full => |_, _| true,
        }
    }
}

/// The `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimiser steps completed.
    pub step: usize,
    /// Where the data stream continues.
    pub cursor: DataCursor,
    /// The run's settings.
    pub config: TrainConfig,
    /// What is trained.
    pub trained: Trained,
    /// The data the run trains on (absent for data made in memory, and in checkpoints written
    /// before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataFingerprint>,
}

const STATE: &str = "state.json";
const TRAINED: &str = "trained.safetensors";
const AE: &str = "autoencoder.safetensors";
const EMA: &str = "ema.safetensors";
const OPTIM: &str = "optimizer";
const OPTIM_AE: &str = "optimizer_ae";
const OPTIM_TEXT: &str = "optimizer_text";

fn store_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Weights(format!("{}: {e}", path.display()))
}

/// Saves `module`'s parameters selected by `filter` (burn paths, f32; enum variant names are
/// left out, so a model wrapped in an enum module keeps its own paths).
///
/// The file is written beside `path` under a temporary name and renamed over it: an existing
/// file is replaced whole or not at all. Its header is sorted, so the same parameters always
/// give the same bytes.
pub fn save_params<B: Backend, M: Module<B>>(
    module: &M,
    path: &Path,
    filter: fn(&str, &str) -> bool,
) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "params".into());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    // A temporary file left by a killed save is stale; the store will not overwrite it.
    let _ = std::fs::remove_file(&tmp);
    let mut store = SafetensorsStore::from_file(&tmp)
        .with_predicate(filter)
        .skip_enum_variants(true);
    let saved = module
        .save_into(&mut store)
        .map_err(|e| store_err(path, e))
        .and_then(|()| canonicalize_safetensors(&tmp));
    if let Err(e) = saved {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Loads parameters saved by [`save_params`] with the same filter; every selected parameter
/// must be in the file.
pub fn load_params<B: Backend, M: Module<B>>(
    mut module: M,
    path: &Path,
    filter: fn(&str, &str) -> bool,
) -> Result<M> {
    if !path.exists() {
        return Err(Error::MissingFile(format!(
            "{} does not exist",
            path.display()
        )));
    }
    check_params(&module, path, filter)?;
    let target = <B::FloatElem as burn::tensor::Element>::dtype();
    let mut store = SafetensorsStore::from_file(path)
        .with_predicate(filter)
        .with_from_adapter(FloatCast(target))
        .skip_enum_variants(true)
        .allow_partial(true);
    let result = module
        .load_from(&mut store)
        .map_err(|e| store_err(path, e))?;
    // The store reports every parameter it did not load; only the selected ones must be there.
    let missing: Vec<&String> = result
        .missing
        .iter()
        .map(|(p, _)| p)
        .filter(|p| filter(p, ""))
        .collect();
    if let Some(p) = missing.first() {
        return Err(Error::Weights(format!(
            "{}: missing {p} ({} parameters missing)",
            path.display(),
            missing.len()
        )));
    }
    Ok(module)
}

/// Checks `path` before burn-store decodes it: a well-formed safetensors file whose tensors
/// are all floats (the reader's checks), holding every parameter `filter` selects in the shape
/// the module has. burn-store trusts dtypes and shapes, and bytes it cannot trust end the
/// process instead of returning an error.
fn check_params<B: Backend, M: Module<B>>(
    module: &M,
    path: &Path,
    filter: fn(&str, &str) -> bool,
) -> Result<()> {
    let tensors = read_tensors(&CheckpointFiles::single(path))?;
    let mut missing = Vec::new();
    for expected in expected_tensors(module) {
        if !filter(&expected.path, "") {
            continue;
        }
        match tensors.get(&expected.path) {
            None => missing.push(expected.path),
            Some(t) if t.shape != expected.burn_shape => {
                return Err(Error::Weights(format!(
                    "{}: tensor {} has shape {:?}, the model expects {:?}",
                    path.display(),
                    expected.path,
                    t.shape,
                    expected.burn_shape
                )));
            }
            Some(_) => {}
        }
    }
    match missing.first() {
        Some(p) => Err(Error::Weights(format!(
            "{}: missing {p} ({} parameters missing)",
            path.display(),
            missing.len()
        ))),
        None => Ok(()),
    }
}

/// Converts float tensors to the backend's float type as they load (a file saved from an f32
/// run read into an f64 or bf16 backend; burn-store keeps the file's dtype otherwise).
#[derive(Clone)]
struct FloatCast(DType);

impl ModuleAdapter for FloatCast {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let target = self.0;
        if !snapshot.dtype.is_float() || snapshot.dtype == target {
            return snapshot.clone();
        }
        let source = snapshot.clone();
        TensorSnapshot::from_closure(
            Rc::new(move || source.to_data().map(|d| d.convert_dtype(target))),
            target,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// What a checkpoint holds besides its state.
pub struct CheckpointParts<'a, B: AutodiffBackend, M, A, O1, O2> {
    /// The denoiser.
    pub model: &'a M,
    /// The map auto-encoder.
    pub ae: &'a A,
    /// The denoiser's optimiser.
    pub optim: &'a O1,
    /// The text encoders' optimiser, when they train at their own learning rate.
    pub optim_text: Option<&'a O1>,
    /// The auto-encoder's optimiser.
    pub optim_ae: &'a O2,
    /// The EMA model, if kept.
    pub ema: Option<&'a M>,
    /// Writes the run's export (`pytorch_lora_weights.safetensors`) into the checkpoint
    /// folder, given the folder and the exported model (the EMA's when kept).
    pub export: Option<&'a ExportFn<M>>,
    /// The run's resolved settings file (`config.toml`, from [`render`](super::render)).
    pub settings: Option<&'a str>,
    /// Marker.
    pub _b: std::marker::PhantomData<B>,
}

/// Writes an export of the model into a checkpoint folder (see [`CheckpointParts::export`]).
pub type ExportFn<M> = dyn Fn(&Path, &M) -> Result<()>;

/// The settings a run in `out` was resolved with: those of its latest checkpoint, else those
/// written when it started; `None` when the folder has neither.
pub fn saved_settings(out: &Path) -> Result<Option<super::SettingsFile>> {
    let checkpoint = latest_checkpoint(&out.join("checkpoints"))?;
    let candidates = checkpoint.map(|dir| dir.join(super::SETTINGS_FILE));
    for path in candidates
        .into_iter()
        .chain([out.join(super::SETTINGS_FILE)])
    {
        if path.is_file() {
            return super::SettingsFile::read(&path).map(Some);
        }
    }
    Ok(None)
}

/// The folder of the checkpoint after `step` under `root` (`<out>/checkpoints/step-0000100`).
pub fn checkpoint_dir(root: &Path, step: usize) -> PathBuf {
    root.join(checkpoint_name(step))
}

/// The folder name of the checkpoint after `step` (`step-0000100`).
fn checkpoint_name(step: usize) -> String {
    format!("step-{step:07}")
}

/// Writes a checkpoint under `root` (`<out>/checkpoints`) and points `latest` at it; keeps
/// the newest `state.config.checkpoints_total_limit` (0: all). Returns its folder.
pub fn save_checkpoint<B, M, A, O1, O2>(
    root: &Path,
    state: &CheckpointState,
    parts: CheckpointParts<'_, B, M, A, O1, O2>,
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    A: AutodiffModule<B>,
    O1: Optimizer<M, B>,
    O2: Optimizer<A, B>,
{
    let name = checkpoint_name(state.step);
    let dir = root.join(&name);
    let tmp = root.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;

    // A failed write (a full disk, say) leaves no temporary folder behind; `latest` still
    // names the previous checkpoint.
    if let Err(e) = write_checkpoint(&tmp, state, parts) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(root, &name, state.config.checkpoints_total_limit);
    Ok(dir)
}

/// The files of a checkpoint, into the folder `tmp`.
fn write_checkpoint<B, M, A, O1, O2>(
    tmp: &Path,
    state: &CheckpointState,
    parts: CheckpointParts<'_, B, M, A, O1, O2>,
) -> Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    A: AutodiffModule<B>,
    O1: Optimizer<M, B>,
    O2: Optimizer<A, B>,
{
    let filter = state.trained.filter();
    save_params(parts.model, &tmp.join(TRAINED), filter)?;
    save_params(parts.ae, &tmp.join(AE), |_, _| true)?;
    if let Some(ema) = parts.ema {
        save_params(ema, &tmp.join(EMA), filter)?;
    }
    if let Some(export) = parts.export {
        export(tmp, parts.ema.unwrap_or(parts.model))?;
    }
    if let Some(settings) = parts.settings {
        super::write_settings(tmp, settings)?;
    }
    save_optimizer(parts.optim, &tmp.join(OPTIM))?;
    if let Some(optim_text) = parts.optim_text {
        save_optimizer(optim_text, &tmp.join(OPTIM_TEXT))?;
    }
    save_optimizer(parts.optim_ae, &tmp.join(OPTIM_AE))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Json {
        path: tmp.join(STATE),
        error: e,
    })?;
    std::fs::write(tmp.join(STATE), json).map_err(|e| Error::io(&tmp.join(STATE), e))
}

/// Removes checkpoint folders older than the newest `keep` (0: none removed) and stale
/// temporary folders.
fn prune(root: &Path, newest: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut done: Vec<String> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.contains(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        } else if name.starts_with("step-") && name.as_str() <= newest {
            done.push(name);
        }
    }
    done.sort();
    let excess = match keep {
        0 => 0,
        keep => done.len().saturating_sub(keep),
    };
    for name in &done[..excess] {
        let _ = std::fs::remove_dir_all(root.join(name));
    }
}

/// The folder `latest` points to under `root`, if any.
pub fn latest_checkpoint(root: &Path) -> Result<Option<PathBuf>> {
    let latest = root.join("latest");
    if !latest.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
    let dir = root.join(name.trim());
    if !dir.join(STATE).exists() {
        return Err(Error::MissingFile(format!(
            "{} names {} which has no {STATE}",
            latest.display(),
            dir.display()
        )));
    }
    Ok(Some(dir))
}

/// Reads a checkpoint's `state.json`. A setting [`TrainConfig`] gained after the checkpoint
/// was written (`text_encoder_lr`, say) takes its default, so a checkpoint of an earlier
/// version still resumes.
pub fn read_state(dir: &Path) -> Result<CheckpointState> {
    let path = dir.join(STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json = |error| Error::Json {
        path: path.clone(),
        error,
    };
    let mut state: serde_json::Value = serde_json::from_str(&text).map_err(json)?;
    if let Some(config) = state.get_mut("config") {
        let defaults = TrainConfig::new(crate::calibration::CtcalConfig::new());
        fill_missing(config, &serde_json::to_value(defaults).map_err(json)?);
    }
    serde_json::from_value(state).map_err(json)
}

/// Adds to the JSON object `value` every key of `defaults` it lacks, object by object; an enum
/// variant with data (`{"FixedSigma": 0.05}`) is one value, kept whole as [`super::merge`]
/// keeps it.
fn fill_missing(value: &mut serde_json::Value, defaults: &serde_json::Value) {
    use serde_json::Value::Object;
    let (Object(have), Object(default)) = (value, defaults) else {
        return;
    };
    if is_variant(have.keys()) || is_variant(default.keys()) {
        return;
    }
    for (key, d) in default {
        match have.get_mut(key) {
            Some(v) => fill_missing(v, d),
            None => {
                have.insert(key.clone(), d.clone());
            }
        }
    }
}

/// Restores the modules and optimisers of checkpoint `dir` (the state from [`read_state`]):
/// `optims` are the denoiser's, the text encoders' (when they train at their own learning
/// rate) and the auto-encoder's.
#[allow(clippy::type_complexity)]
pub fn load_checkpoint<B, M, A, O1, O2>(
    dir: &Path,
    state: &CheckpointState,
    model: M,
    ae: A,
    (optim, optim_text, optim_ae): (O1, Option<O1>, O2),
    device: &B::Device,
) -> Result<(M, A, (O1, Option<O1>, O2), Option<M>)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Clone,
    A: AutodiffModule<B>,
    O1: Optimizer<M, B>,
    O2: Optimizer<A, B>,
{
    let filter = state.trained.filter();
    let ema = if dir.join(EMA).exists() {
        Some(load_params(
            model.clone().no_grad(),
            &dir.join(EMA),
            filter,
        )?)
    } else {
        None
    };
    let model = load_params(model, &dir.join(TRAINED), filter)?;
    let ae = load_params(ae, &dir.join(AE), |_, _| true)?;
    let optim = load_optimizer(optim, &dir.join(OPTIM), device)?;
    let optim_text = optim_text
        .map(|o| load_optimizer(o, &dir.join(OPTIM_TEXT), device))
        .transpose()?;
    let optim_ae = load_optimizer(optim_ae, &dir.join(OPTIM_AE), device)?;
    Ok((model, ae, (optim, optim_text, optim_ae), ema))
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use crate::calibration::{MapAutoEncoder, MapAutoEncoderConfig};
    use safetensors::{Dtype, tensor::TensorView};

    type Cpu = burn_ndarray::NdArray<f32>;

    /// Rewrites the safetensors file at `path` with `key` replaced by a tensor of `dtype` and
    /// `shape` (zero bytes), the way a hand-edited or foreign file would hold it.
    fn replace_tensor(path: &Path, key: &str, dtype: Dtype, shape: &[usize]) {
        let bytes = std::fs::read(path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let size = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        let zeros = vec![0u8; size];
        let mut views: Vec<(String, TensorView<'_>)> = file
            .tensors()
            .into_iter()
            .filter(|(name, _)| name != key)
            .collect();
        views.push((
            key.to_string(),
            TensorView::new(dtype, shape.to_vec(), &zeros).unwrap(),
        ));
        let out = safetensors::serialize(views, None).unwrap();
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn load_params_names_file_key_and_dtype_or_shape_before_decoding() {
        let device = Default::default();
        let dir = std::env::temp_dir().join(format!("ctcal-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ae.safetensors");
        let ae: MapAutoEncoder<Cpu> = MapAutoEncoderConfig::new().init(&device);
        save_params(&ae, &path, |_, _| true).unwrap();
        let load = || {
            let fresh: MapAutoEncoder<Cpu> = MapAutoEncoderConfig::new().init(&device);
            load_params(fresh, &path, |_, _| true)
        };
        assert!(load().is_ok());
        let key = expected_tensors(&ae)[0].clone();

        // An integer tensor under a parameter's key: burn-store would hand its bytes on.
        replace_tensor(&path, &key.path, Dtype::I64, &key.burn_shape);
        let msg = load().unwrap_err().to_string();
        assert!(
            msg.contains("ae.safetensors") && msg.contains(&key.path) && msg.contains("I64"),
            "{msg}"
        );
        // A float tensor of another shape.
        replace_tensor(&path, &key.path, Dtype::F32, &[3]);
        let msg = load().unwrap_err().to_string();
        assert!(
            msg.contains(&key.path) && msg.contains("[3]") && msg.contains("expects"),
            "{msg}"
        );
        // Garbage and a missing file.
        std::fs::write(&path, b"\x10\0\0\0\0\0\0\0{\"a\":1}garbage").unwrap();
        assert!(load().unwrap_err().to_string().contains("ae.safetensors"));
        std::fs::remove_file(&path).unwrap();
        assert!(load().unwrap_err().to_string().contains("does not exist"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A checkpoint written before `text_encoder_lr` existed (its `state.json` without the
    /// key) reads with the default, and keeps every value it has, a teacher rule of another
    /// variant than the default's included.
    #[test]
    fn a_state_without_a_newer_setting_takes_its_default() {
        let dir = std::env::temp_dir().join(format!("ctcal-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ctcal = crate::calibration::CtcalConfig::sd3()
            .with_teacher(crate::calibration::TeacherRule::FixedSigma(0.05));
        let config = TrainConfig::new(ctcal)
            .with_lr(3e-4)
            .with_text_encoder_lr(1e-5);
        let state = CheckpointState {
            step: 7,
            cursor: DataCursor {
                seed: 1,
                epoch: 0,
                position: 14,
                len: 64,
            },
            config: config.clone(),
            trained: Trained::Lora,
            data: None,
        };
        let mut json = serde_json::to_value(&state).unwrap();
        let fields = json["config"].as_object_mut().unwrap();
        assert!(fields.remove("text_encoder_lr").is_some());
        std::fs::write(dir.join(STATE), json.to_string()).unwrap();
        let read = read_state(&dir).unwrap();
        assert_eq!(read.config, config.with_text_encoder_lr(5e-6));
        assert_eq!((read.step, read.cursor.position), (7, 14));
        // A wrong type is still an error naming the file.
        json["config"]["lr"] = "fast".into();
        std::fs::write(dir.join(STATE), json.to_string()).unwrap();
        let msg = read_state(&dir).unwrap_err().to_string();
        assert!(msg.contains("state.json"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A run's saved settings: the latest checkpoint's, else the output folder's.
    #[test]
    fn saved_settings_prefer_the_latest_checkpoint() {
        let out = std::env::temp_dir().join(format!("ctcal-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(out.join("checkpoints/step-0000002")).unwrap();
        assert_eq!(saved_settings(&out).unwrap(), None);
        let config = TrainConfig::new(crate::calibration::CtcalConfig::sd21());
        let run = toml::Table::new();
        crate::train::write_settings(
            &out,
            &crate::train::render(&run, &config.clone().with_steps(2)).unwrap(),
        )
        .unwrap();
        let steps = |out: &Path| {
            let file = saved_settings(out).unwrap().unwrap();
            file.train_config(&config).unwrap().steps
        };
        assert_eq!(steps(&out), 2);
        let dir = out.join("checkpoints/step-0000002");
        std::fs::write(dir.join("state.json"), "{}").unwrap();
        crate::train::write_settings(
            &dir,
            &crate::train::render(&run, &config.clone().with_steps(9)).unwrap(),
        )
        .unwrap();
        std::fs::write(out.join("checkpoints/latest"), "step-0000002").unwrap();
        assert_eq!(steps(&out), 9);
        std::fs::remove_dir_all(&out).unwrap();
    }
}
