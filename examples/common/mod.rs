//! Pieces the examples share: the backend switch and writing outputs and heatmaps.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use clap::ValueEnum;
use ctcal::attention::StoredMap;
use ctcal::viz::{heatmap_row, save_png};
use ctcal::weights::{TensorEntry, write_tensor_file};

pub mod train;

/// The backend an example runs on (each needs its cargo feature).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendKind {
    /// CPU (feature `ndarray`, the default).
    Ndarray,
    /// wgpu (feature `wgpu`).
    Wgpu,
    /// CUDA (feature `cuda`).
    Cuda,
}

/// Calls `$run::<Backend>($args, &device)` for the chosen backend (`Autodiff<Backend>` with a
/// trailing `autodiff`; with `autodiff($checkpointing)`, burn's `BalancedCheckpointing`
/// strategy when the boolean is true, which recomputes cheap activations in the backward
/// instead of keeping them), or fails naming the missing cargo feature.
macro_rules! dispatch {
    ($kind:expr, $run:ident, $args:expr) => {
        dispatch!(@wrap $kind, $run, $args, |B| B)
    };
    ($kind:expr, $run:ident, $args:expr, autodiff) => {
        dispatch!(@wrap $kind, $run, $args, |B| burn::backend::Autodiff<B>)
    };
    ($kind:expr, $run:ident, $args:expr, autodiff($checkpointing:expr)) => {
        if $checkpointing {
            dispatch!(@wrap $kind, $run, $args, |B| burn::backend::Autodiff<
                B,
                burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
            >)
        } else {
            dispatch!(@wrap $kind, $run, $args, |B| burn::backend::Autodiff<B>)
        }
    };
    (@wrap $kind:expr, $run:ident, $args:expr, |B| $wrap:ty) => {{
        match $kind {
            #[cfg(feature = "ndarray")]
            common::BackendKind::Ndarray => {
                type B = burn::backend::NdArray<f32>;
                ctcal::nn::retain_freed_memory();
                $run::<$wrap>($args, &Default::default())
            }
            #[cfg(feature = "wgpu")]
            common::BackendKind::Wgpu => {
                type B = burn::backend::Wgpu<f32>;
                $run::<$wrap>($args, &Default::default())
            }
            #[cfg(feature = "cuda-untuned")]
            common::BackendKind::Cuda => {
                type B = burn::backend::Cuda<f32>;
                $run::<$wrap>($args, &Default::default())
            }
            #[allow(unreachable_patterns)]
            other => anyhow::bail!(
                "backend {other:?} is not compiled in: rebuild with --features {}",
                format!("{other:?}").to_lowercase()
            ),
        }
    }};
}

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
