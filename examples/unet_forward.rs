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

mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use common::{write_heatmaps, write_outputs};
use ctcal::attention::AttentionBackend;
use ctcal::attention::{AttentionStore, SiteFilter};
use ctcal::launch::{BackendKind, OnBackend, launch};
use ctcal::unet::UNet2DConditionConfig;
use ctcal::weights::{TensorFile, load_module, to_entry};

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
    #[arg(long, default_value_t = BackendKind::default())]
    backend: BackendKind,
    /// Skip the PNG heatmaps.
    #[arg(long)]
    no_png: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    launch(args.backend, Run(&args))?
}

struct Run<'a>(&'a Args);

impl OnBackend for Run<'_> {
    type Output = Result<()>;
    fn run<B: AttentionBackend>(self, device: &B::Device) -> Result<()> {
        run::<B>(self.0, device)
    }
}

fn run<B: AttentionBackend>(args: &Args, device: &B::Device) -> Result<()> {
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

    let tensors = write_outputs(&args.out, to_entry(out), &maps)?;
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
