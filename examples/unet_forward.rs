//! Runs a diffusers UNet folder on saved inputs and writes the output and every cross-attention
//! map, so a user can check their checkpoint against diffusers.
//!
//! With no arguments it runs the tiny random-weight UNet shipped in `weights/tiny-sd21` on a
//! caption-like input and also writes each cross-attention layer's maps as PNG heatmaps.
//!
//! ```text
//! cargo run --release --example unet_forward -- \
//!     --model path/to/unet --inputs inputs.safetensors --out out.safetensors
//! ```
//! `inputs.safetensors` holds `sample` `[b, c, h, w]`, `timestep` `[b]` and
//! `encoder_hidden_states` `[b, tokens, dim]`; `out.safetensors` gets `out` and one map
//! `[b, heads, h*w, tokens]` per `attn2` layer, named by its diffusers path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use clap::{Parser, ValueEnum};
use ctcal::attention::{AttentionStore, SiteFilter, StoredMap};
use ctcal::unet::UNet2DConditionConfig;
use ctcal::viz::{heatmap_row, save_png};
use ctcal::weights::{TensorFile, load_module, to_entry, write_tensor_file};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendKind {
    Ndarray,
    Wgpu,
    Cuda,
}

/// Run a diffusers UNet2DConditionModel folder and dump its output and cross-attention maps.
#[derive(Parser, Debug)]
struct Args {
    /// A diffusers `unet/` folder (config.json + diffusion_pytorch_model[.fp16].safetensors).
    #[arg(long, default_value = "weights/tiny-sd21/unet")]
    model: PathBuf,
    /// Safetensors with `sample`, `timestep` and `encoder_hidden_states`.
    #[arg(long, default_value = "weights/tiny-sd21/example_inputs.safetensors")]
    inputs: PathBuf,
    /// Output safetensors (`out` and the maps); PNG heatmaps go beside it.
    #[arg(long, default_value = "out/unet_forward/out.safetensors")]
    out: PathBuf,
    /// Weight variant to load (e.g. `fp16`).
    #[arg(long)]
    variant: Option<String>,
    /// Backend to run on.
    #[arg(long, value_enum, default_value = "ndarray")]
    backend: BackendKind,
    /// Skip the PNG heatmaps.
    #[arg(long)]
    no_png: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.backend {
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => run::<burn::backend::NdArray<f32>>(&args, &Default::default()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => run::<burn::backend::Wgpu<f32>>(&args, &Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => run::<burn::backend::Cuda<f32>>(&args, &Default::default()),
        #[allow(unreachable_patterns)]
        other => bail!(
            "backend {other:?} is not compiled in: rebuild with --features {}",
            format!("{other:?}").to_lowercase()
        ),
    }
}

fn run<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let start = std::time::Instant::now();
    let config = UNet2DConditionConfig::from_diffusers_json(&args.model.join("config.json"))?;
    let (unet, report) = load_module(
        config.init::<B>(device),
        &args.model,
        args.variant.as_deref(),
    )?;
    println!(
        "loaded {} tensors ({}) from {}",
        report.tensors,
        report.source_dtypes.join(", "),
        report.files.join(", ")
    );

    let inputs = TensorFile::read(&args.inputs)?;
    let sample = inputs.tensor::<B, 4>("sample", device)?;
    let timestep = inputs.tensor::<B, 1>("timestep", device)?;
    let context = inputs.tensor::<B, 3>("encoder_hidden_states", device)?;
    unet.check_inputs(sample.dims(), timestep.dims(), context.dims())
        .with_context(|| format!("inputs {}", args.inputs.display()))?;

    let mut store = AttentionStore::new(SiteFilter::cross());
    let out = unet.forward_with_hook(sample, timestep, context, &mut store);
    let maps = store.take();

    let mut tensors = BTreeMap::new();
    tensors.insert("out".to_string(), to_entry(out));
    for map in &maps {
        tensors.insert(map.site.path(), to_entry(map.probs.clone()));
    }
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_tensor_file(&args.out, &tensors, None)?;
    println!(
        "wrote out {:?} and {} cross-attention maps to {} ({:.2} s)",
        tensors["out"].0,
        maps.len(),
        args.out.display(),
        start.elapsed().as_secs_f64()
    );

    if !args.no_png {
        let tokens: Option<Vec<String>> = inputs
            .metadata
            .get("tokens")
            .and_then(|t| serde_json::from_str(t).ok());
        write_heatmaps(&maps, &args.out, tokens.as_deref())?;
    }
    Ok(())
}

/// One PNG per cross-attention layer: the head-averaged map of each token of the first sample,
/// left to right in token order.
fn write_heatmaps<B: Backend>(
    maps: &[StoredMap<B>],
    out: &Path,
    tokens: Option<&[String]>,
) -> Result<()> {
    let dir = out.parent().unwrap_or(Path::new("."));
    for map in maps {
        let [_, _, q, k] = map.probs.dims();
        // Head average of sample 0: [q, k].
        let avg = map
            .probs
            .clone()
            .narrow(0, 0, 1)
            .mean_dim(1)
            .reshape([q, k]);
        let avg = avg.swap_dims(0, 1).into_data().convert::<f32>();
        let values = avg.to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let per_token: Vec<Vec<f32>> = values.chunks(q).map(<[f32]>::to_vec).collect();
        let img = heatmap_row(&per_token, map.grid, 64);
        let path = dir.join(format!("{}.png", map.site.path()));
        save_png(&img, &path)?;
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
