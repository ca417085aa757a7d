//! The compositional shapes benchmark (issue 7), stage by stage.
//!
//! ```text
//! cargo run --release --example shapes_bench -- data       # the detector on ground truth
//! cargo run --release --example shapes_bench -- bench      # claims 1-3 from the shipped base
//! cargo run --release --example shapes_bench -- pretrain   # the base model from scratch
//! cargo run --release --example shapes_bench -- agreement  # claim 1 alone, any model
//! ```
//! Every stage writes JSON (and `bench` a table and a plot) under `--out` (default
//! `out/shapes`). The base model shipped in `weights/shapes-base` is `pretrain`'s output.

mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use clap::{Parser, Subcommand};

use ctcal::attention::AutodiffAttentionBackend;
use ctcal::ctcal::CtcalConfig;
use ctcal::shapes::{
    AgreementProbe, Detector, ShapesConfig, ShapesModel, ShapesModelConfig, ShapesSet, Split,
    TrainRun, Vocab, agreement_by_level, flow_schedule, render, satisfies, train_shapes,
};

#[derive(Parser)]
#[command(about = "CTCal's compositional shapes benchmark")]
struct Args {
    /// Where results and models go.
    #[arg(long, default_value = "out/shapes", global = true)]
    out: PathBuf,
    /// Seed of the data and of training.
    #[arg(long, default_value_t = 0, global = true)]
    seed: u64,
    #[command(subcommand)]
    stage: Stage,
}

#[derive(Subcommand)]
enum Stage {
    /// Generate both splits and score the detector on the generator's own images.
    Data {
        /// Scenes per split.
        #[arg(long, default_value_t = 500)]
        scenes: usize,
    },
    /// Train the base model (text encoder + pixel MMDiT) from scratch, plain flow loss.
    Pretrain(PretrainArgs),
    /// Claims 1-3: the base model, then LoRA fine-tunes with and without CTCal (same data,
    /// steps and seeds), each measured for map agreement by level, held-out flow loss and the
    /// detector's scores of samples for held-out captions.
    Bench(report::BenchArgs),
    /// Claim 1: agreement of each noun's map with its mask, by noise level.
    Agreement {
        /// The model (default: the shipped base).
        #[arg(long, default_value = BASE)]
        model: PathBuf,
        /// Held-out scenes measured.
        #[arg(long, default_value_t = 200)]
        scenes: usize,
        /// Only these attention layers' maps (diffusers paths such as
        /// `transformer_blocks.0.attn`; default: every joint attention).
        #[arg(long)]
        layer: Vec<String>,
    },
}

/// The shipped base model.
const BASE: &str = "weights/shapes-base/base.safetensors";

#[derive(clap::Args)]
struct PretrainArgs {
    /// Optimiser steps.
    #[arg(long, default_value_t = 1500)]
    steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Training scenes.
    #[arg(long, default_value_t = 4000)]
    scenes: usize,
    /// Peak learning rate (linear warm-up over the first 5% of steps).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Share of captions replaced by the empty one (for guidance).
    #[arg(long, default_value_t = 0.1)]
    caption_dropout: f64,
    /// Continue from these weights instead of a fresh initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
}

type B = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;
    let device = Default::default();
    match &args.stage {
        Stage::Data { scenes } => data(&args.out, *scenes, args.seed),
        Stage::Pretrain(p) => pretrain::<B>(&args.out, p, args.seed, &device),
        Stage::Bench(b) => report::bench::<B>(&args.out, b, args.seed, &device),
        Stage::Agreement {
            model,
            scenes,
            layer,
        } => agreement::<B>(&args.out, model, *scenes, layer, args.seed, &device),
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    ctcal::weights::write_atomic(path, text.as_bytes())?;
    println!("wrote {}", path.display());
    Ok(())
}

fn data(out: &Path, n: usize, seed: u64) -> Result<()> {
    let config = ShapesConfig::new();
    let det = Detector::default();
    let mut rows = Vec::new();
    println!("detector on the generator's images ({n} scenes per split):");
    println!(
        "{:<9} {:<15} {:>6} {:>9}",
        "split", "category", "scenes", "accuracy"
    );
    for (split, name) in [(Split::Train, "train"), (Split::HeldOut, "held-out")] {
        let scenes = config.generate(split, n, seed)?;
        for cat in ["shape", "colour_binding", "counting", "spatial"] {
            let of_cat: Vec<_> = scenes
                .iter()
                .filter(|s| s.claim.category() == cat)
                .collect();
            let ok = of_cat
                .iter()
                .filter(|s| {
                    let img = render(s, config.size);
                    satisfies(&s.claim, &det.detect(&img.rgb, config.size))
                })
                .count();
            let acc = ok as f64 / of_cat.len().max(1) as f64;
            println!("{name:<9} {cat:<15} {:>6} {acc:>9.4}", of_cat.len());
            rows.push(serde_json::json!({
                "split": name, "category": cat, "scenes": of_cat.len(), "accuracy": acc
            }));
        }
        ctcal::shapes::write_dataset(&out.join(name), &scenes[..n.min(64)], config.size)?;
    }
    write_json(&out.join("detector.json"), &rows)
}

fn pretrain<B: AutodiffAttentionBackend>(
    out: &Path,
    p: &PretrainArgs,
    seed: u64,
    device: &B::Device,
) -> Result<()> {
    let vocab = Vocab::default();
    let shapes = ShapesConfig::new();
    let set = ShapesSet::new(
        shapes.generate(Split::Train, p.scenes, seed)?,
        shapes.size,
        &vocab,
    )?;
    let model_config = ShapesModelConfig::tiny();
    B::seed(device, seed);
    let mut model: ShapesModel<B> = model_config.init(device)?;
    if let Some(path) = &p.init {
        model = model.load(path)?;
        println!("continuing from {}", path.display());
    }
    println!(
        "base model: {} parameters; {} training scenes",
        model.num_params(),
        set.len()
    );
    let run = TrainRun {
        steps: p.steps,
        batch: p.batch,
        lr: p.lr,
        warmup_steps: (p.steps / 20).max(1),
        weight_decay: 0.0,
        lora_rank: None,
        caption_dropout: p.caption_dropout,
        ctcal: CtcalConfig::sd3().with_lambda_ctcal(0.0),
        seed: seed ^ 0xba5e,
    };
    let start = Instant::now();
    let (mut log, mut running) = (Vec::new(), Vec::new());
    let model = train_shapes(
        model,
        &set,
        &flow_schedule(),
        &run,
        device,
        |step, parts| {
            running.push(parts.diffusion);
            if (step + 1) % 50 == 0 || step + 1 == p.steps {
                let mean = running.iter().sum::<f64>() / running.len() as f64;
                running.clear();
                println!(
                    "step {:>6}  diffusion loss {mean:.4}  {:.1} s",
                    step + 1,
                    start.elapsed().as_secs_f64()
                );
                log.push(serde_json::json!({"step": step + 1, "diffusion": mean}));
            }
        },
    )?;
    model.save(&out.join("base.safetensors"))?;
    write_json(&out.join("base_config.json"), &model_config)?;
    write_json(&out.join("pretrain_log.json"), &log)
}

fn agreement<B: AutodiffAttentionBackend>(
    out: &Path,
    path: &Path,
    n: usize,
    layers: &[String],
    seed: u64,
    device: &B::Device,
) -> Result<()> {
    let vocab = Vocab::default();
    let shapes = ShapesConfig::new();
    let model: ShapesModel<B> = ShapesModelConfig::tiny().init::<B>(device)?.load(path)?;
    let mut rows = Vec::new();
    for (split, name) in [(Split::Train, "train"), (Split::HeldOut, "held-out")] {
        // Measured on scenes the model never saw (another seed for the training split).
        let set = ShapesSet::new(shapes.generate(split, n, seed + 1000)?, shapes.size, &vocab)?;
        let probe = AgreementProbe {
            levels: report::LEVELS.to_vec(),
            schedule: flow_schedule(),
            config: CtcalConfig::sd3().with_layer_paths(layers.to_vec()),
            batch: 32,
            seed,
        };
        let curve = agreement_by_level(&model, &set, &probe, device)?;
        println!(
            "{name}: sigma, mass inside mask, IoU, chance ({} maps)",
            curve[0].maps
        );
        for c in &curve {
            println!(
                "  {:>5.2}  {:>6.3}  {:>6.3}  {:>6.3}",
                c.level, c.mass_inside, c.iou, c.chance
            );
        }
        rows.push(serde_json::json!({"split": name, "curve": curve}));
    }
    write_json(&out.join("agreement.json"), &rows)
}
