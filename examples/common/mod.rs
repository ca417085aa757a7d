//! Pieces the examples share: writing outputs and heatmaps, and the training CLI.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use ctcal::attention::StoredMap;
use ctcal::viz::{heatmap_row, save_png};
use ctcal::weights::{TensorEntry, write_tensor_file};

pub mod log;
pub mod settings;
pub mod train;

/// Writes `out` and one entry per map (named by its diffusers path) to `path`.
pub fn write_outputs<B: Backend>(
    path: &Path,
    out: TensorEntry,
    maps: &[StoredMap<B>],
) -> Result<BTreeMap<String, TensorEntry>> {
    let mut tensors = BTreeMap::new();
    tensors.insert("out".to_string(), out);
    for map in maps {
        tensors.insert(map.site.path(), ctcal::weights::to_entry(map.probs.clone()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_tensor_file(path, &tensors, None)?;
    Ok(tensors)
}

/// One PNG per attention layer beside `out`: the head-averaged map of each token of the first
/// sample, left to right in token order. Joint maps are renormalised over the text keys first.
pub fn write_heatmaps<B: Backend>(
    maps: &[StoredMap<B>],
    out: &Path,
    tokens: Option<&[String]>,
) -> Result<()> {
    let dir = out.parent().unwrap_or(Path::new("."));
    for map in maps {
        let [_, _, q, k] = map.probs.dims();
        let probs = map.probs.clone().narrow(0, 0, 1);
        let probs = probs.clone() / probs.sum_dim(3);
        let avg = probs.mean_dim(1).reshape([q, k]);
        let avg = avg.swap_dims(0, 1).into_data().convert::<f32>();
        let values = avg.to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let per_token: Vec<Vec<f32>> = values.chunks(q).map(<[f32]>::to_vec).collect();
        let img = heatmap_row(&per_token, map.grid, 64);
        save_png(&img, &dir.join(format!("{}.png", map.site.path())))?;
    }
    match tokens {
        Some(t) => println!(
            "heatmaps in {}: one tile per token, {}",
            dir.display(),
            t.join(" | ")
        ),
        None => println!("heatmaps in {}: one tile per token", dir.display()),
    }
    Ok(())
}
