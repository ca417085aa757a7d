//! The compositional shapes benchmark (issue 7), stage by stage.
//!
//! ```text
//! cargo run --release -p ctcal-shapes -- data                 # the detector on ground truth
//! cargo run --release -p ctcal-shapes -- bench                # claims 1-3 (stops on a weak teacher)
//! cargo run --release -p ctcal-shapes -- --arch unet bench    # the same for the UNet
//! cargo run --release -p ctcal-shapes -- pretrain             # a base model from scratch
//! cargo run --release -p ctcal-shapes -- agreement            # claim 1 alone, any model
//! ```
//! Every stage writes JSON (and `bench` a table and plots) under `--out` (default
//! `out/shapes/<arch>`). `bench` checks the base model's teacher maps first, then fine-tunes
//! three arms per seed (plain, CTCal, and the oracle with the true masks as teacher maps) and
//! reports them paired against plain fine-tuning; `--seed` shifts every seed. The base models shipped in `weights/shapes-mmdit` and
//! `weights/shapes-unet` are `pretrain`'s output.

mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use clap::{Parser, Subcommand};

use ctcal::attention::AutodiffAttentionBackend;
use ctcal::launch::{BackendKind, OnAutodiffBackend, launch_autodiff};
use ctcal::pipeline::shapes::{
    ShapesArch, ShapesModel, ShapesModelConfig, Vocab, load_shapes_model,
};
use ctcal_shapes::{
    AgreementProbe, ArchLevels, Detector, ShapesConfig, ShapesSet, Split, TrainRun,
    agreement_by_level, render, satisfies, train_shapes,
};

#[derive(Parser)]
#[command(about = "CTCal's compositional shapes benchmark")]
struct Args {
    /// The denoiser: `mmdit` (SD 3's, rectified flow) or `unet` (SD 2.1's, DDPM v-prediction).
    #[arg(long, default_value = "mmdit", global = true)]
    arch: ShapesArch,
    /// Where results and models go (default `out/shapes/<arch>`).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Seed of the data and of training.
    #[arg(long, default_value_t = 0, global = true)]
    seed: u64,
    /// Backend to run on (each needs its cargo feature; on a GPU give `bench` `--jobs 1`).
    #[arg(long, default_value = "ndarray", global = true)]
    backend: BackendKind,
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
    /// Train a base model (text encoder + pixel-space denoiser) from scratch, plain diffusion
    /// loss.
    Pretrain(PretrainArgs),
    /// Claims 1-3: the base model, then LoRA fine-tunes with and without CTCal (same data,
    /// steps and seeds), each measured for map agreement by level, held-out flow loss and the
    /// detector's scores of samples for held-out captions.
    Bench(report::BenchArgs),
    /// One run of `bench` (started by it): the spec file it wrote.
    #[command(hide = true)]
    Run {
        /// `runs/<name>/spec.json` under the bench's `--out`.
        spec: PathBuf,
    },
    /// Claim 1: agreement of each noun's map with its mask, by noise level.
    Agreement {
        /// The model folder (default: the shipped base model of `--arch`).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Held-out scenes measured.
        #[arg(long, default_value_t = 200)]
        scenes: usize,
        /// Only these attention layers' maps (diffusers paths such as
        /// `transformer_blocks.0.attn` or `down_blocks.1.attentions.0.transformer_blocks.0.attn2`;
        /// default: the layers CTCal supervises).
        #[arg(long)]
        layer: Vec<String>,
    },
}

/// The shipped base model of an architecture.
fn base_dir(arch: ShapesArch) -> PathBuf {
    PathBuf::from(format!("weights/shapes-{arch}"))
}

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
    /// Continue from this model folder instead of a fresh initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Checkpoint every N steps (and at the end) under `<out>/train/checkpoints`.
    #[arg(long, default_value_t = 250)]
    checkpoint_every: usize,
    /// Continue the interrupted run in `<out>/train` from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after the first step past this many minutes: that step is checkpointed and the
    /// model written as at the end; `--resume` continues (a long pretraining in pieces).
    #[arg(long)]
    time_limit: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.backend == BackendKind::Ndarray {
        ctcal::heap::retain_freed_memory();
    }
    launch_autodiff(args.backend, false, Stages(&args))?
}

/// The chosen stage on the chosen backend.
struct Stages<'a>(&'a Args);

impl OnAutodiffBackend for Stages<'_> {
    type Output = Result<()>;
    fn run<B: AutodiffAttentionBackend>(self, device: &B::Device) -> Result<()> {
        run::<B>(self.0, device)
    }
}

fn run<B: AutodiffAttentionBackend>(args: &Args, device: &B::Device) -> Result<()> {
    let out = match &args.out {
        Some(out) => out.clone(),
        None => PathBuf::from(format!("out/shapes/{}", args.arch)),
    };
    if !matches!(args.stage, Stage::Run { .. }) {
        std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
    }
    let arch = args.arch;
    match &args.stage {
        Stage::Data { scenes } => data(&out, *scenes, args.seed),
        Stage::Pretrain(p) => pretrain::<B>(&out, arch, p, args.seed, device),
        Stage::Bench(b) => {
            let base = b.base.clone().unwrap_or_else(|| base_dir(arch));
            let backend = args.backend.to_string();
            report::bench::<B>(&out, &base, b, &backend, args.seed, device)
        }
        Stage::Run { spec } => report::run::<B>(spec, device),
        Stage::Agreement {
            model,
            scenes,
            layer,
        } => {
            let model = model.clone().unwrap_or_else(|| base_dir(arch));
            agreement::<B>(&out, &model, *scenes, layer, args.seed, device)
        }
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
        ctcal_shapes::write_dataset(&out.join(name), &scenes[..n.min(64)], config.size)?;
    }
    write_json(&out.join("detector.json"), &rows)
}

fn pretrain<B: AutodiffAttentionBackend>(
    out: &Path,
    arch: ShapesArch,
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
    let model_config = match &p.init {
        Some(dir) => ShapesModelConfig::read(&dir.join("base_config.json"))?,
        None => ShapesModelConfig::tiny(arch),
    };
    if model_config.arch() != arch {
        anyhow::bail!(
            "--init is a {} model, --arch says {arch}",
            model_config.arch()
        );
    }
    B::seed(device, seed);
    let mut model: ShapesModel<B> = model_config.init(device)?;
    if let Some(dir) = &p.init {
        model = load_shapes_model(dir, device)?;
        println!("continuing from {}", dir.display());
    }
    println!(
        "{arch} base model: {} parameters ({} in the denoiser); {} training scenes",
        model.num_params(),
        model.denoiser.num_params(),
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
        ctcal: arch.ctcal().with_lambda_ctcal(0.0),
        seed: seed ^ 0xba5e,
        checkpoint_every: p.checkpoint_every,
        oracle: false,
        time_limit_s: p.time_limit.map(|minutes| minutes * 60.0),
    };
    let start = Instant::now();
    let (mut log, mut running) = (Vec::new(), Vec::new());
    let mut last_step = 0;
    let model = train_shapes(
        model,
        &model_config,
        Arc::new(set),
        &run,
        &out.join("train"),
        p.resume,
        device,
        |step| {
            last_step = step.step;
            running.push(step.loss.diffusion);
            if step.step % 50 == 0 || step.step == p.steps || step.checkpoint.is_some() {
                let mean = running.iter().sum::<f64>() / running.len() as f64;
                running.clear();
                println!(
                    "step {:>6}  diffusion loss {mean:.4}  {:.1} s",
                    step.step,
                    start.elapsed().as_secs_f64()
                );
                log.push(serde_json::json!({"step": step.step, "diffusion": mean}));
            }
        },
    )?;
    model.save_dir(&model_config, out)?;
    println!("wrote {}", out.display());
    if last_step < p.steps {
        println!(
            "the time limit stopped the run after step {last_step} of {}: `pretrain --resume` \
             with the same settings continues it",
            p.steps
        );
    }
    // A resumed run's log continues the earlier pieces' (their entries up to where it
    // resumed).
    let log_path = out.join("pretrain_log.json");
    let first = log
        .first()
        .and_then(|e| e["step"].as_u64())
        .unwrap_or(u64::MAX);
    if p.resume && log_path.is_file() {
        let text = std::fs::read_to_string(&log_path)?;
        let before: Vec<serde_json::Value> = serde_json::from_str(&text)
            .with_context(|| format!("reading {}", log_path.display()))?;
        let kept = before
            .into_iter()
            .filter(|e| e["step"].as_u64().is_some_and(|s| s < first));
        log = kept.chain(log).collect();
    }
    write_json(&log_path, &log)
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
    let model: ShapesModel<B> = load_shapes_model(path, device)?;
    let arch = model.arch();
    let mut rows = Vec::new();
    for (split, name) in [(Split::Train, "train"), (Split::HeldOut, "held-out")] {
        // Measured on scenes the model never saw (another seed for the training split).
        let set = ShapesSet::new(shapes.generate(split, n, seed + 1000)?, shapes.size, &vocab)?;
        let probe = AgreementProbe {
            levels: arch.levels(),
            schedule: arch.schedule(),
            config: arch.ctcal().with_layer_paths(layers.to_vec()),
            batch: 32,
            seed,
        };
        let curve = agreement_by_level(&model, &set, &probe, device)?;
        println!(
            "{name}: {}, AUROC, pointing game, mass inside mask, IoU, chance ({} maps)",
            arch.level_name(),
            curve[0].maps
        );
        for c in &curve {
            println!(
                "  {:>5.2}  {:>6.3}  {:>6.3}  {:>6.3}  {:>6.3}  {:>6.3}",
                c.level, c.auroc, c.pointing, c.mass_inside, c.iou, c.chance
            );
        }
        rows.push(serde_json::json!({"split": name, "curve": curve}));
    }
    write_json(&out.join("agreement.json"), &rows)
}
