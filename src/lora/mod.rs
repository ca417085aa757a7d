//! LoRA (low-rank adapters) on the denoisers' attention projections, with PEFT's names and
//! diffusers' file layout (`peft/tuners/lora/layer.py`, `diffusers/loaders/peft.py`).
//!
//! Every attention projection of [`UNet2DConditionModel`](crate::unet::UNet2DConditionModel)
//! and [`SD3Transformer2DModel`](crate::mmdit::SD3Transformer2DModel) is a [`LoraLinear`],
//! built without an adapter, so the models load and run exactly as before. Fine-tuning with
//! LoRA:
//!
//! 1. build the model and load the base checkpoint with [`crate::weights::load_module`];
//! 2. [`apply_lora`] freezes every base parameter (`Module::no_grad`) and attaches fresh
//!    adapters (`B = 0`, so the output is unchanged) to the projections the [`LoraConfig`]
//!    names; only the adapters require gradients, so `GradientsParams::from_grads` holds only
//!    them and the optimiser keeps state only for them;
//! 3. train; [`export_peft`] writes a file `pipe.load_lora_weights()` accepts, [`import_peft`]
//!    reads it back to resume, and [`merge_lora`] folds the adapters into the base weights for
//!    inference.
//!
//! The base checkpoint may also be loaded after step 2: the loader never expects or touches
//! adapter parameters and keeps each parameter's `require_grad` flag. Full fine-tuning is
//! the same model without step 2.

mod config;

mod peft;
mod target;
#[cfg(test)]
mod tests;

pub use crate::nn::LoraLinear;
pub use config::{LoraConfig, pattern_matches};
pub use peft::{export_peft, import_peft, peft_components};
pub use target::LoraTarget;

use burn::tensor::backend::Backend;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::weights::expected_tensors;

/// What [`apply_lora`], [`import_peft`] or [`export_peft`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraReport {
    /// Diffusers module paths of the projections with adapters, in forward order.
    pub paths: Vec<String>,
    /// Adapter parameters (`rank * (in + out)` per projection): what the optimiser trains.
    pub trainable_params: usize,
    /// Parameters of the model besides the adapters, frozen ([`apply_lora`] only; 0 otherwise).
    pub frozen_params: usize,
    /// Tensors of an imported file outside the model's prefix, e.g. text-encoder adapters
    /// ([`import_peft`] only).
    pub ignored: usize,
}

impl LoraReport {
    /// Number of adapted projections.
    pub fn adapters(&self) -> usize {
        self.paths.len()
    }

    fn add<B: Backend>(&mut self, path: &str, layer: &LoraLinear<B>) {
        self.paths.push(path.to_string());
        self.trainable_params += layer.adapter_params();
    }
}

/// Freezes every parameter of `model` and attaches fresh adapters to the projections that
/// `config` matches: `A` uniform in `±1/sqrt(in)` from a generator seeded with `seed`, `B = 0`,
/// scale `alpha / rank`, on the device of each base weight.
///
/// Call it after loading the base weights. Errors (naming the field or pattern): an invalid
/// config, a pattern that matches no LoRA-capable projection, a projection that already has an
/// adapter (merge or rebuild first).
pub fn apply_lora<B: Backend, M: LoraTarget<B>>(
    model: M,
    config: &LoraConfig,
    seed: u64,
) -> Result<(M, LoraReport)> {
    config.validate()?;
    let mut paths = Vec::new();
    let mut adapted = Vec::new();
    // The targeted projection with the smallest side: a rank above it adds nothing but memory.
    let mut narrowest: Option<(String, [usize; 2])> = None;
    model.visit_lora(&mut |path, layer| {
        paths.push(path.to_string());
        if layer.has_adapter() {
            adapted.push(path.to_string());
        }
        let dims = layer.dims();
        let side = |d: [usize; 2]| d[0].min(d[1]);
        if config.matches(path)
            && narrowest
                .as_ref()
                .is_none_or(|(_, n)| side(dims) < side(*n))
        {
            narrowest = Some((path.to_string(), dims));
        }
    });
    if let Some((path, [d_in, d_out])) = narrowest.filter(|(_, d)| config.rank > d[0].min(d[1])) {
        return Err(Error::Config(format!(
            "lora rank {} is larger than the projection {path} ({d_in} -> {d_out}); a rank can \
             be at most {} here",
            config.rank,
            d_in.min(d_out)
        )));
    }
    if let Some(path) = adapted.first() {
        return Err(Error::Config(format!(
            "{path} already has a LoRA adapter ({} projections do); merge_lora first",
            adapted.len()
        )));
    }
    for pattern in &config.target_modules {
        if !paths.iter().any(|p| pattern_matches(pattern, p)) {
            return Err(Error::Config(format!(
                "lora target module {pattern:?} matches no attention projection (they end in {})",
                keys_hint(&paths)
            )));
        }
    }

    let model = model.no_grad();
    let mut report = LoraReport {
        frozen_params: expected_tensors(&model)
            .iter()
            .map(|t| t.burn_shape.iter().product::<usize>())
            .sum(),
        ..Default::default()
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let (rank, scale) = (config.rank, config.scale());
    let model = model.map_lora(&mut |path, layer| {
        if !config.matches(path) {
            return layer;
        }
        let layer = layer.attach_fresh(rank, scale, config.dropout, &mut rng);
        report.add(path, &layer);
        layer
    });
    Ok((model, report))
}

/// Folds every adapter into its base weight (`W + scale * A B`) and drops it: the plain model
/// for inference, running as fast as one that never had adapters. Parameters keep their
/// `require_grad` flags (frozen after [`apply_lora`]).
pub fn merge_lora<B: Backend, M: LoraTarget<B>>(model: M) -> M {
    model.map_lora(&mut |_, layer| LoraLinear::new(layer.merge()))
}

/// The distinct last segments of the projection paths, for messages.
fn keys_hint(paths: &[String]) -> String {
    let mut ends: Vec<&str> = paths
        .iter()
        .map(|p| match p.ends_with(".to_out.0") {
            true => "to_out.0",
            false => p.rsplit('.').next().unwrap_or(p),
        })
        .collect();
    ends.sort();
    ends.dedup();
    ends.join(", ")
}
