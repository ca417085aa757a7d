//! Writing a module back in diffusers' layout, so fully fine-tuned weights load with
//! `from_pretrained`: the inverse of [`super::load_module`].

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};

use super::keys::to_diffusers_key;
use super::tensor_file::{TensorEntry, write_tensor_file};
use crate::error::{Error, Result};

/// The name diffusers gives a model folder's weights file.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// Every float parameter of `module` under its diffusers key, in PyTorch layout (`Linear`
/// weights transposed back), as f32. Keys for which `skip` is true are left out.
pub fn diffusers_tensors<B: Backend, M: Module<B>>(
    module: &M,
    skip: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, TensorEntry>> {
    let mut out = BTreeMap::new();
    for snapshot in module.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true) {
        let path = snapshot.full_path();
        if skip(&path) {
            continue;
        }
        let data = snapshot
            .to_data()
            .map_err(|e| Error::Weights(format!("reading {path}: {e:?}")))?
            .convert::<f32>();
        let shape = data.shape.to_vec();
        let values = data
            .to_vec::<f32>()
            .map_err(|e| Error::Weights(format!("reading {path}: {e:?}")))?;
        out.insert(to_diffusers_key(&path), (shape, values));
    }
    Ok(out)
}

/// Writes `module` into the diffusers model folder `folder` (`config.json` copied from
/// `config_src`, weights as one f32 safetensors file, written atomically).
pub fn save_diffusers<B: Backend, M: Module<B>>(
    module: &M,
    config_src: &Path,
    folder: &Path,
    skip: impl Fn(&str) -> bool,
) -> Result<usize> {
    std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
    let tensors = diffusers_tensors(module, skip)?;
    write_tensor_file(&folder.join(WEIGHTS_FILE), &tensors, None)?;
    let config = std::fs::read(config_src).map_err(|e| Error::io(config_src, e))?;
    super::write_atomic(&folder.join("config.json"), &config)?;
    Ok(tensors.len())
}
