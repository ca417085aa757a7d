//! The compositional shapes benchmark (issue 7), stage by stage.
//!
//! ```text
//! cargo run --release --example shapes_bench -- data                 # detector on ground truth
//! cargo run --release --example shapes_bench -- pretrain --steps 3000 # base model from scratch
//! cargo run --release --example shapes_bench -- agreement            # claim 1 on the base model
//! ```
//! Every stage writes JSON under `--out` (default `out/shapes`) and prints a table. Built so
//! far: the data, the detector, the base model's training and the agreement-by-level curve.
//! The fine-tuning pairs (claims 2 and 3) are not written yet.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use ctcal::attention::AutodiffAttentionBackend;
use ctcal::ctcal::{
    CtcalConfig, MapAutoEncoderConfig, Schedule, StepDraw, TeacherRule, TrainBatch, ctcal_step,
};
use ctcal::nn::normal_tensor;
use ctcal::schedule::FlowConfig;
use ctcal::shapes::{
    Detector, ShapesConfig, ShapesModel, ShapesModelConfig, ShapesSet, Split, Vocab,
    agreement_by_level, render, satisfies,
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
    Pretrain {
        /// Optimiser steps.
        #[arg(long, default_value_t = 3000)]
        steps: usize,
        /// Batch size.
        #[arg(long, default_value_t = 32)]
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
    },
    /// Claim 1: agreement of each noun's map with its mask, by noise level.
    Agreement {
        /// The model (default `<out>/base.safetensors`).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Held-out scenes measured.
        #[arg(long, default_value_t = 200)]
        scenes: usize,
    },
}

type B = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;
    let device = Default::default();
    match args.stage {
        Stage::Data { scenes } => data(&args.out, scenes, args.seed),
        Stage::Pretrain {
            steps,
            batch,
            scenes,
            lr,
            caption_dropout,
        } => pretrain::<B>(
            &args.out,
            Pretrain {
                steps,
                batch,
                scenes,
                lr,
                caption_dropout,
                seed: args.seed,
            },
            &device,
        ),
        Stage::Agreement { model, scenes } => {
            let model = model.unwrap_or_else(|| args.out.join("base.safetensors"));
            agreement::<B>(&args.out, &model, scenes, args.seed, &device)
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
        ctcal::shapes::write_dataset(&out.join(name), &scenes[..n.min(64)], config.size)?;
    }
    write_json(&out.join("detector.json"), &rows)
}

struct Pretrain {
    steps: usize,
    batch: usize,
    scenes: usize,
    lr: f64,
    caption_dropout: f64,
    seed: u64,
}

fn flow_schedule() -> Schedule {
    // 32x32 pixels: no resolution shift.
    Schedule::Flow(FlowConfig::new().with_shift(1.0).init())
}

fn pretrain<B: AutodiffAttentionBackend>(
    out: &Path,
    p: Pretrain,
    device: &B::Device,
) -> Result<()> {
    let vocab = Vocab::default();
    let shapes = ShapesConfig::new();
    let set = ShapesSet::new(
        shapes.generate(Split::Train, p.scenes, p.seed)?,
        shapes.size,
        &vocab,
    )?;
    let model_config = ShapesModelConfig::tiny();
    B::seed(device, p.seed);
    let mut model: ShapesModel<B> = model_config.init(device)?;
    println!(
        "base model: {} parameters; {} training scenes",
        model.num_params(),
        set.len()
    );
    let ae = MapAutoEncoderConfig::new().init::<B>(device);
    let schedule = flow_schedule();
    let config = CtcalConfig::sd3().with_lambda_ctcal(0.0);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.0)
        .init::<B, ShapesModel<B>>();
    let mut rng = StdRng::seed_from_u64(p.seed ^ 0xba5e);
    let warmup = (p.steps / 20).max(1);
    let start = Instant::now();
    let mut log = Vec::new();
    let mut running = 0.0;
    for step in 0..p.steps {
        let index: Vec<usize> = (0..p.batch)
            .map(|_| rng.random_range(0..set.len()))
            .collect();
        let dropped: Vec<bool> = (0..p.batch)
            .map(|_| rng.random_bool(p.caption_dropout))
            .collect();
        let b = set.batch::<B>(&index, &dropped, device)?;
        let cond = model.encode(&b.ids, device)?;
        let (student, teacher) =
            schedule.sample_levels(&mut rng, p.batch, TeacherRule::SmallerOfTwo)?;
        let draw = StepDraw {
            noise: normal_tensor::<B, 4>(&mut rng, b.pixels.dims(), device),
            student,
            teacher,
        };
        let data = TrainBatch {
            latents: b.pixels,
            cond,
            nouns: b.nouns,
        };
        let out = ctcal_step(&model.denoiser, &ae, &data, &draw, &schedule, &config)?;
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let lr = p.lr * ((step + 1) as f64 / warmup as f64).min(1.0);
        model = optim.step(lr, model, grads);
        running += out.parts.diffusion;
        if (step + 1) % 50 == 0 || step + 1 == p.steps {
            let n = if (step + 1) % 50 == 0 {
                50
            } else {
                (step + 1) % 50
            };
            let mean = running / n as f64;
            running = 0.0;
            println!(
                "step {:>6}  diffusion loss {mean:.4}  {:.1} s",
                step + 1,
                start.elapsed().as_secs_f64()
            );
            log.push(serde_json::json!({"step": step + 1, "diffusion": mean}));
        }
    }
    model.save(&out.join("base.safetensors"))?;
    write_json(&out.join("base_config.json"), &model_config)?;
    write_json(&out.join("pretrain_log.json"), &log)
}

fn agreement<B: AutodiffAttentionBackend>(
    out: &Path,
    path: &Path,
    n: usize,
    seed: u64,
    device: &B::Device,
) -> Result<()> {
    let vocab = Vocab::default();
    let shapes = ShapesConfig::new();
    let model: ShapesModel<B> = ShapesModelConfig::tiny().init::<B>(device)?.load(path)?;
    let levels = [0.02, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.98];
    let mut rows = Vec::new();
    for (split, name) in [(Split::Train, "train"), (Split::HeldOut, "held-out")] {
        // Measured on scenes the model never saw (another seed for the training split).
        let set = ShapesSet::new(shapes.generate(split, n, seed + 1000)?, shapes.size, &vocab)?;
        let curve = agreement_by_level(
            &model,
            &set,
            &levels,
            &flow_schedule(),
            &CtcalConfig::sd3(),
            32,
            seed,
            device,
        )?;
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
    write_json(&out.join("agreement_base.json"), &rows)
}
