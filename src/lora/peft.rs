//! LoRA weights as safetensors in the diffusers/PEFT layout, which `pipe.load_lora_weights()`
//! reads: `{prefix}{module path}.lora_A.weight` (`[rank, in]`) and `.lora_B.weight`
//! (`[out, rank]`), PyTorch layout, f32.
//!
//! A bare PEFT state dict carries no `lora_alpha`, and diffusers then uses `lora_alpha = r`
//! (scale 1, `get_peft_kwargs` in `diffusers/utils/peft_utils.py`). So the export bakes our
//! `scale = alpha / rank` into `lora_B`, and the import divides it back out when the layer
//! already has an adapter with a scale. The file's `__metadata__` records rank and alpha for
//! humans under `ctcal.lora.*` keys; diffusers reads only its own `lora_adapter_metadata` key,
//! which is not written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use burn::tensor::{DType, Element, Tensor, backend::Backend};

use super::{LoraLinear, LoraReport, LoraTarget};
use crate::error::{Error, Result};
use crate::weights::write_tensor_file;
use crate::weights::{CheckpointFiles, LazyTensor, TensorEntry, read_tensors, to_entry};

/// Writes every adapter of `model` to `path` (atomically) with keys
/// `{prefix}{diffusers path}.lora_A.weight` / `.lora_B.weight`; `prefix` is
/// [`LoraTarget::PEFT_PREFIX`] for `pipe.load_lora_weights()`, or `""` for a bare model's
/// `load_lora_adapter(..., prefix=None)`. `lora_B` holds `scale * B` (see the module docs).
///
/// A model without adapters is an error (there is nothing a pipeline could load).
pub fn export_peft<B: Backend, M: LoraTarget<B>>(
    model: &M,
    path: &Path,
    prefix: &str,
) -> Result<LoraReport> {
    let mut tensors: BTreeMap<String, TensorEntry> = BTreeMap::new();
    let mut report = LoraReport::default();
    let (mut ranks, mut alphas) = (BTreeSet::new(), BTreeSet::new());
    model.visit_lora(&mut |module, layer| {
        let (Some(a), Some(b), Some(rank)) = (&layer.lora_a, &layer.lora_b, layer.rank()) else {
            return;
        };
        let key = format!("{prefix}{module}");
        tensors.insert(
            format!("{key}.lora_A.weight"),
            to_entry(a.weight.val().transpose()),
        );
        tensors.insert(
            format!("{key}.lora_B.weight"),
            to_entry(b.weight.val().mul_scalar(layer.scale).transpose()),
        );
        ranks.insert(rank);
        alphas.insert(format!("{}", layer.scale * rank as f64));
        report.add(module, layer);
    });
    if tensors.is_empty() {
        return Err(Error::Input(format!(
            "{}: the model has no LoRA adapters to export (apply_lora or import_peft first)",
            path.display()
        )));
    }
    let join = |items: Vec<String>| items.join(",");
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "ctcal.lora.rank".to_string(),
            join(ranks.iter().map(usize::to_string).collect()),
        ),
        (
            "ctcal.lora.alpha".to_string(),
            join(alphas.into_iter().collect()),
        ),
        (
            "ctcal.lora.note".to_string(),
            "lora_B holds (alpha / rank) * B: load with lora_alpha = r, diffusers' default"
                .to_string(),
        ),
    ]);
    write_tensor_file(path, &tensors, Some(metadata))?;
    Ok(report)
}

/// The pipeline components a PEFT-layout file adapts: the first segment of each
/// `lora_A`/`lora_B` key (`unet`, `transformer`, `text_encoder`, `text_encoder_2`), for
/// loading each part of a file like `pipe.load_lora_weights()` does.
pub fn peft_components(path: &Path) -> Result<BTreeSet<String>> {
    let tensors = read_tensors(&CheckpointFiles::single(path))?;
    Ok(tensors
        .keys()
        .filter(|k| k.contains(".lora_A.") || k.contains(".lora_B."))
        .filter_map(|k| k.split_once('.').map(|(first, _)| first.to_string()))
        .collect())
}

/// Loads the adapters of a PEFT-layout file (as [`export_peft`] writes, or diffusers' LoRA
/// training scripts) into `model`, for resuming, merging or inference.
///
/// Keys outside `prefix` (text-encoder adapters, say) are ignored and counted in
/// [`LoraReport::ignored`]; inside it, every `lora_A`/`lora_B` pair must belong to a
/// LoRA-capable projection, with shapes `[rank, in]` and `[out, rank]`. A layer that already
/// has an adapter keeps its scale and dropout (the file's `lora_B` is divided by the scale,
/// undoing the export) and must have the file's rank; a layer without one gets an adapter of
/// the file's rank with scale 1 and no dropout. A model adapter the file lacks is an error.
/// To resume training with the original alpha and dropout, call
/// [`apply_lora`](super::apply_lora) with the same config first.
pub fn import_peft<B: Backend, M: LoraTarget<B>>(
    model: M,
    path: &Path,
    prefix: &str,
) -> Result<(M, LoraReport)> {
    let file = path.display().to_string();
    let all = read_tensors(&CheckpointFiles::single(path))?;
    let total = all.len();
    let mut tensors: HashMap<String, LazyTensor> = all
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
        .collect();
    if tensors.is_empty() {
        return Err(Error::Weights(format!(
            "{file}: no tensor key starts with {prefix:?} ({total} keys in the file)"
        )));
    }
    let ignored = total - tensors.len();

    // 1. Check every layer against the file; keep the tensors to set.
    let mut errors = Vec::new();
    let mut found: HashMap<String, (LazyTensor, LazyTensor)> = HashMap::new();
    model.visit_lora(&mut |module, layer| {
        let ka = format!("{module}.lora_A.weight");
        let kb = format!("{module}.lora_B.weight");
        let name = |k: &str| format!("{prefix}{k}");
        match (tensors.remove(&ka), tensors.remove(&kb)) {
            (Some(a), Some(b)) => match check_shapes(layer, &a, &b) {
                Ok(()) => {
                    found.insert(module.to_string(), (a, b));
                }
                Err(e) => errors.push(format!("{}: {e}", name(&ka))),
            },
            (Some(_), None) => {
                errors.push(format!("{} missing (its lora_A is present)", name(&kb)))
            }
            (None, Some(_)) => {
                errors.push(format!("{} missing (its lora_B is present)", name(&ka)))
            }
            (None, None) if layer.has_adapter() => errors.push(format!(
                "{} missing: the model has an adapter on {module}",
                name(&ka)
            )),
            (None, None) => {}
        }
    });
    let mut unexpected: Vec<String> = tensors
        .into_keys()
        .map(|k| format!("{prefix}{k}"))
        .collect();
    unexpected.sort();
    if !unexpected.is_empty() {
        errors.push(format!(
            "{} unexpected key(s) (only attention projections carry adapters): {}",
            unexpected.len(),
            unexpected
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !errors.is_empty() {
        return Err(Error::Weights(format!("{file}: {}", errors.join("; "))));
    }

    // 2. Set the adapters.
    let target: DType = <B::FloatElem as Element>::dtype();
    let mut report = LoraReport {
        ignored,
        ..Default::default()
    };
    let mut failure = None;
    let model = model.map_lora(&mut |module, layer| {
        let Some((a, b)) = found.remove(module) else {
            return layer;
        };
        match set_adapter(layer.clone(), &a, &b, target) {
            Ok(layer) => {
                report.add(module, &layer);
                layer
            }
            Err(e) => {
                failure.get_or_insert(format!("{file}: {prefix}{module}: {e}"));
                layer
            }
        }
    });
    match failure {
        Some(message) => Err(Error::Weights(message)),
        None => Ok((model, report)),
    }
}

/// `A: [rank, in]`, `B: [out, rank]`, and the layer's rank if it has an adapter.
fn check_shapes<B: Backend>(
    layer: &LoraLinear<B>,
    a: &LazyTensor,
    b: &LazyTensor,
) -> std::result::Result<(), String> {
    let [d_in, d_out] = layer.dims();
    let (sa, sb) = (&a.shape, &b.shape);
    let fits = sa.len() == 2 && sb.len() == 2 && sa[0] >= 1 && sa[1] == d_in && sb[0] == d_out;
    if !fits || sb[1] != sa[0] {
        return Err(format!(
            "lora_A has shape {sa:?} and lora_B {sb:?}, the layer expects [rank, {d_in}] and \
             [{d_out}, rank]"
        ));
    }
    match layer.rank() {
        Some(rank) if rank != sa[0] => Err(format!(
            "the file has rank {}, the model's adapter rank {rank}",
            sa[0]
        )),
        _ => Ok(()),
    }
}

/// The layer with the file's adapter (PyTorch layout in the file, burn layout in the layer).
fn set_adapter<B: Backend>(
    layer: LoraLinear<B>,
    a: &LazyTensor,
    b: &LazyTensor,
    target: DType,
) -> std::result::Result<LoraLinear<B>, String> {
    let device = layer.base.weight.lazy_device();
    let load = |t: &LazyTensor| {
        t.to_data(target)
            .map(|data| Tensor::<B, 2>::from_data(data, &device).transpose())
            .map_err(|e| e.to_string())
    };
    let (a, b) = (load(a)?, load(b)?);
    Ok(if layer.has_adapter() {
        let b = b.div_scalar(layer.scale);
        layer.set_adapter_weights(a, b)
    } else {
        layer.with_adapter(a, b, 1.0).map_err(|e| e.to_string())?
    })
}
