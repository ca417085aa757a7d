//! Runs a diffusers SD 3 `transformer/` folder on saved inputs and writes the output and the
//! image-to-text block of every joint attention, so a user can check their checkpoint against
//! diffusers.
//!
//! With no arguments it runs the tiny random-weight MMDiT shipped in `weights/tiny-sd3` on a
//! caption-like input and also writes each layer's maps as PNG heatmaps (renormalised over the
//! text keys).
//!
//! ```text
//! cargo run --release --example mmdit_forward -- \
//!     --model path/to/transformer --inputs inputs.safetensors --out out.safetensors
//! ```
//! `inputs.safetensors` holds `hidden_states` `[b, c, h, w]`, `timestep` `[b]` (`1000 * sigma`),
//! `encoder_hidden_states` `[b, tokens, dim]` and `pooled_projections` `[b, pooled_dim]`;
//! `out.safetensors` gets `out` and one map `[b, heads, h*w / p^2, tokens]` per joint layer,
//! named by its diffusers path (`transformer_blocks.{i}.attn`).

mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use common::{write_heatmaps, write_outputs};
use ctcal::attention::AttentionBackend;
use ctcal::attention::{AttentionKind, AttentionStore, SiteFilter};
use ctcal::launch::{BackendKind, OnBackend, launch};
use ctcal::mmdit::SD3Transformer2DConfig;
use ctcal::weights::{TensorFile, load_module, to_entry};

/// Run a diffusers SD3Transformer2DModel folder and dump its output and joint-attention maps.
#[derive(Parser, Debug)]
struct Args {
    /// A diffusers `transformer/` folder (config.json + weights, single, `.fp16` or sharded).
    #[arg(long, default_value = "weights/tiny-sd3/transformer")]
    model: PathBuf,
    /// Safetensors with `hidden_states`, `timestep`, `encoder_hidden_states` and
    /// `pooled_projections`.
    #[arg(long, default_value = "weights/tiny-sd3/example_inputs.safetensors")]
    inputs: PathBuf,
    /// Output safetensors (`out` and the maps); PNG heatmaps go beside it.
    #[arg(long, default_value = "out/mmdit_forward/out.safetensors")]
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
    let config = SD3Transformer2DConfig::from_diffusers_json(&args.model.join("config.json"))?;
    let (model, report) = load_module(
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
    let x = inputs.tensor::<B, 4>("hidden_states", device)?;
    let timestep = inputs.tensor::<B, 1>("timestep", device)?;
    let context = inputs.tensor::<B, 3>("encoder_hidden_states", device)?;
    let pooled = inputs.tensor::<B, 2>("pooled_projections", device)?;
    model
        .check_inputs(x.dims(), timestep.dims(), context.dims(), pooled.dims())
        .with_context(|| format!("inputs {}", args.inputs.display()))?;

    let mut store = AttentionStore::new(SiteFilter::default().with_kinds([AttentionKind::Joint]));
    let out = model.forward_with_hook(x, timestep, context, pooled, &mut store);
    let maps = store.take();

    let tensors = write_outputs(&args.out, to_entry(out), &maps)?;
    println!(
        "wrote out {:?} and {} joint-attention maps to {} ({:.2} s)",
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
