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
    AgreementProbe, Detector, ShapesConfig, ShapesModel, ShapesModelConfig, ShapesSet, Split,
    Vocab, agreement_by_level, render, satisfies,
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
    /// Claims 1-3: the base model, then LoRA fine-tunes with and without CTCal (same data,
    /// steps and seeds), each measured for map agreement by level, held-out flow loss and the
    /// detector's scores of samples for held-out captions.
    Bench {
        /// The base model (default: the shipped `weights/shapes-base/base.safetensors`).
        #[arg(long)]
        base: Option<PathBuf>,
        /// Fine-tuning steps per run.
        #[arg(long, default_value_t = 100)]
        steps: usize,
        /// Seeds (runs per arm).
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Batch size.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Learning rate (adapters and map auto-encoder).
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// LoRA rank.
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// Held-out scenes for every measurement.
        #[arg(long, default_value_t = 128)]
        eval_scenes: usize,
        /// Euler steps per sample.
        #[arg(long, default_value_t = 16)]
        sample_steps: usize,
        /// Classifier-free guidance scale of the samples.
        #[arg(long, default_value_t = 3.0)]
        guidance: f64,
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
        Stage::Bench {
            base,
            steps,
            seeds,
            batch,
            lr,
            rank,
            eval_scenes,
            sample_steps,
            guidance,
        } => {
            let base =
                base.unwrap_or_else(|| PathBuf::from("weights/shapes-base/base.safetensors"));
            let opts = BenchOpts {
                steps,
                seeds,
                batch,
                lr,
                rank,
                eval_scenes,
                sample_steps,
                guidance,
                seed: args.seed,
            };
            bench::<B>(&args.out, &base, &opts, &device)
        }
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
        let probe = AgreementProbe {
            levels: levels.to_vec(),
            schedule: flow_schedule(),
            config: CtcalConfig::sd3(),
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
    write_json(&out.join("agreement_base.json"), &rows)
}

struct BenchOpts {
    steps: usize,
    seeds: u64,
    batch: usize,
    lr: f64,
    rank: usize,
    eval_scenes: usize,
    sample_steps: usize,
    guidance: f64,
    seed: u64,
}

/// Sigmas of the agreement curves; "large t" for claim 2 is the mean over sigma >= 0.7.
const LEVELS: [f64; 9] = [0.02, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.98];

/// One model's measurements.
#[derive(serde::Serialize, Clone)]
struct Measured {
    curve: Vec<ctcal::shapes::LevelAgreement>,
    large_t_mass: f64,
    large_t_iou: f64,
    heldout_loss: f64,
    compbench: std::collections::BTreeMap<String, f64>,
}

fn measure<B: AutodiffAttentionBackend>(
    model: &ShapesModel<B>,
    eval: &ShapesSet,
    o: &BenchOpts,
    device: &B::Device,
) -> Result<Measured> {
    let probe = AgreementProbe {
        levels: LEVELS.to_vec(),
        schedule: flow_schedule(),
        config: CtcalConfig::sd3(),
        batch: 32,
        seed: o.seed + 7,
    };
    let curve = agreement_by_level(model, eval, &probe, device)?;
    let large: Vec<_> = curve.iter().filter(|c| c.level >= 0.7).collect();
    let mean = |f: &dyn Fn(&ctcal::shapes::LevelAgreement) -> f32| {
        large.iter().map(|c| f(c) as f64).sum::<f64>() / large.len() as f64
    };
    let heldout_loss = ctcal::shapes::heldout_loss(
        model,
        eval,
        &flow_schedule(),
        &[0.1, 0.3, 0.5, 0.7, 0.9],
        o.seed + 8,
        device,
    )?;
    let compbench = ctcal::shapes::compbench(
        &burn::module::AutodiffModule::valid(model),
        eval,
        o.sample_steps,
        o.guidance,
        o.seed + 9,
        device,
    )?;
    Ok(Measured {
        large_t_mass: mean(&|c| c.mass_inside),
        large_t_iou: mean(&|c| c.iou),
        curve,
        heldout_loss,
        compbench,
    })
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

fn bench<B: AutodiffAttentionBackend>(
    out: &Path,
    base_path: &Path,
    o: &BenchOpts,
    device: &B::Device,
) -> Result<()> {
    let start = Instant::now();
    let vocab = Vocab::default();
    let shapes = ShapesConfig::new();
    let model_config = ShapesModelConfig::tiny();
    let load =
        || -> Result<ShapesModel<B>> { Ok(model_config.init::<B>(device)?.load(base_path)?) };
    let eval = ShapesSet::new(
        shapes.generate(Split::HeldOut, o.eval_scenes, o.seed + 1000)?,
        shapes.size,
        &vocab,
    )?;
    let base = measure(&load()?, &eval, o, device)?;
    println!(
        "base: large-t mass {:.3}, held-out loss {:.4}, compbench {:?} ({:.0} s)",
        base.large_t_mass,
        base.heldout_loss,
        base.compbench,
        start.elapsed().as_secs_f64()
    );
    let mut runs: Vec<(String, u64, Measured, Vec<ctcal::ctcal::LossParts>)> = Vec::new();
    for seed in 0..o.seeds {
        let data = ShapesSet::new(
            shapes.generate(Split::Train, 2000, o.seed + 100 + seed)?,
            shapes.size,
            &vocab,
        )?;
        for (arm, lambda) in [("plain", 0.0), ("ctcal", 1.0)] {
            let run = ctcal::shapes::Finetune {
                steps: o.steps,
                batch: o.batch,
                lr: o.lr,
                rank: o.rank,
                ctcal: CtcalConfig::sd3().with_lambda_ctcal(lambda),
                seed: o.seed + seed,
            };
            let (model, log) =
                ctcal::shapes::finetune(load()?, &data, &flow_schedule(), &run, device)?;
            let m = measure(&model, &eval, o, device)?;
            println!(
                "seed {seed} {arm:<5}: large-t mass {:.3}, iou {:.3}, held-out loss {:.4}, compbench {:?} ({:.0} s)",
                m.large_t_mass,
                m.large_t_iou,
                m.heldout_loss,
                m.compbench,
                start.elapsed().as_secs_f64()
            );
            runs.push((arm.to_string(), seed, m, log));
        }
    }
    // Table: mean and standard deviation over seeds.
    let mut table = String::from(
        "| model | large-t mass inside | large-t IoU | held-out flow loss | colour binding | counting | spatial | shape | overall |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let cell = |v: Vec<f64>| {
        let (m, s) = mean_std(&v);
        if v.len() > 1 {
            format!("{m:.3} ± {s:.3}")
        } else {
            format!("{m:.3}")
        }
    };
    let row = |name: &str, ms: Vec<&Measured>| {
        let cb = |k: &str| {
            cell(
                ms.iter()
                    .map(|m| m.compbench.get(k).copied().unwrap_or(0.0))
                    .collect(),
            )
        };
        format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(ms.iter().map(|m| m.large_t_mass).collect()),
            cell(ms.iter().map(|m| m.large_t_iou).collect()),
            cell(ms.iter().map(|m| m.heldout_loss).collect()),
            cb("colour_binding"),
            cb("counting"),
            cb("spatial"),
            cb("shape"),
            cb("overall"),
        )
    };
    table += &row("base", vec![&base]);
    for arm in ["plain", "ctcal"] {
        let ms: Vec<&Measured> = runs.iter().filter(|r| r.0 == arm).map(|r| &r.2).collect();
        table += &row(&format!("{arm} fine-tune ({} seeds)", ms.len()), ms);
    }
    println!("\n{table}");
    ctcal::weights::write_atomic(&out.join("table.md"), table.as_bytes())?;
    // Agreement curves: base, and each arm's mean over seeds.
    let mean_curve = |arm: &str| -> Vec<(f64, f64)> {
        LEVELS
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let v: Vec<f64> = runs
                    .iter()
                    .filter(|r| r.0 == arm)
                    .map(|r| r.2.curve[i].mass_inside as f64)
                    .collect();
                (l, mean_std(&v).0)
            })
            .collect()
    };
    use ctcal::viz::{COLOURS, Series, line_plot};
    let series = vec![
        Series {
            label: "base".into(),
            points: base
                .curve
                .iter()
                .map(|c| (c.level, c.mass_inside as f64))
                .collect(),
            colour: COLOURS[0],
        },
        Series {
            label: "plain".into(),
            points: mean_curve("plain"),
            colour: COLOURS[1],
        },
        Series {
            label: "ctcal".into(),
            points: mean_curve("ctcal"),
            colour: COLOURS[2],
        },
        Series {
            label: "chance".into(),
            points: base
                .curve
                .iter()
                .map(|c| (c.level, c.chance as f64))
                .collect(),
            colour: COLOURS[3],
        },
    ];
    let plot = line_plot(
        "map mass inside the noun's mask vs sigma",
        &series,
        480,
        320,
    );
    ctcal::viz::save_png(&plot, &out.join("agreement.png"))?;
    let runs_json: Vec<_> = runs
        .iter()
        .map(|(arm, seed, m, log)| serde_json::json!({"arm": arm, "seed": seed, "measured": m, "loss": log}))
        .collect();
    write_json(
        &out.join("results.json"),
        &serde_json::json!({"base": base, "runs": runs_json, "seconds": start.elapsed().as_secs_f64()}),
    )
}
