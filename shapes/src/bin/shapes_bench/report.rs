//! The `bench` stage: the base model and paired fine-tunes measured for the method's three
//! claims, reported as a table (mean and standard deviation over seeds) and a plot.
//!
//! Each run (the base model's measurement, or one seed of one arm: fine-tune, then measure)
//! is a child process of this binary (`shapes_bench run <spec.json>`), `--jobs` at a time:
//! burn's autodiff graph and the CPU backend's allocations contend across threads of one
//! process (two fine-tunes on two threads took as long as in sequence), not across
//! processes. Every run seeds itself, so the results do not depend on `--jobs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::calibration::{CtcalConfig, LossParts};
use ctcal::pipeline::shapes::{
    ShapesArch, ShapesModel, ShapesModelConfig, Vocab, load_shapes_model,
};
use ctcal::viz::{COLOURS, LinePlot, Series, YScale, line_plot};
use ctcal_shapes::{
    AgreementProbe, ArchLevels, LevelAgreement, PairedDiff, ShapesConfig, ShapesSet, Split,
    TrainRun, agreement_by_level, level_summaries, map_agreements, mcnemar, paired_bootstrap,
    train_shapes,
};

use super::write_json;

#[derive(clap::Args, serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct BenchArgs {
    /// The base model folder (default: the shipped one of `--arch`).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Fine-tuning steps per run.
    #[arg(long, default_value_t = 80)]
    steps: usize,
    /// Seeds (runs per arm).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// The full setting: at least 5 seeds.
    #[arg(long)]
    #[serde(default)]
    full: bool,
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
    #[arg(long, default_value_t = 64)]
    eval_scenes: usize,
    /// Sampler steps per sample (flow Euler or DDIM).
    #[arg(long, default_value_t = 12)]
    sample_steps: usize,
    /// Classifier-free guidance scale of the samples.
    #[arg(long, default_value_t = 3.0)]
    guidance: f64,
    /// Runs (fine-tune + measurement) at once, each a process (default: the CPU count).
    #[arg(long)]
    jobs: Option<usize>,
    /// The attention layers (UNet) or joint blocks (MMDiT) whose maps CTCal and the oracle
    /// compare and every measurement reads, by diffusers path, comma-separated; default: the
    /// architecture's preset (`ShapesArch::ctcal`). Choose them where the base localises
    /// (`agreement --layer PATH`).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    map_layers: Vec<String>,
    /// Fine-tune even when the base model's teacher maps do not localise (their AUROC at the
    /// smallest noise level below 0.8): CTCal then copies maps near chance.
    #[arg(long)]
    #[serde(default)]
    weak_teacher: bool,
}

impl BenchArgs {
    /// Runs per arm: `--seeds`, at least 5 with `--full`.
    fn seeds(&self) -> u64 {
        match self.full {
            true => self.seeds.max(5),
            false => self.seeds,
        }
    }

    /// The CTCal settings of `arch` with the bench's layers.
    fn ctcal(&self, arch: ShapesArch) -> CtcalConfig {
        match self.map_layers.is_empty() {
            true => arch.ctcal(),
            false => arch.ctcal().with_layer_paths(self.map_layers.clone()),
        }
    }
}

/// The AUROC the base model's maps at the smallest noise level must reach for its teacher to
/// be worth calibrating against.
const TEACHER_AUROC_MIN: f32 = 0.8;

/// The fine-tuning arms, longest first: the oracle (the CTCal loss with the true masks as
/// teacher maps: the ceiling of map supervision here), CTCal, and plain LoRA fine-tuning. Every
/// arm of a seed sees the same data order, noise and levels.
const ARMS: [&str; 3] = ["oracle", "ctcal", "plain"];

/// One model's measurements.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Measured {
    curve: Vec<LevelAgreement>,
    large_t_mass: f64,
    large_t_iou: f64,
    heldout_loss: f64,
    compbench: BTreeMap<String, f64>,
    /// Seconds spent on the agreement curve, the held-out loss and the samples.
    seconds: [f64; 3],
    /// Per level, each noun map's AUROC (scene by scene, noun by noun; `None` where the mask
    /// covers no cell or every cell): what the arms are paired on.
    #[serde(default)]
    map_auroc: Vec<Vec<Option<f32>>>,
    /// Per held-out caption, whether its sample satisfies it.
    #[serde(default)]
    outcomes: Vec<bool>,
    /// The detector's shares on in-distribution captions (colour-shape pairs seen in
    /// training, fresh scenes).
    #[serde(default)]
    compbench_in: BTreeMap<String, f64>,
    /// Per in-distribution caption, whether its sample satisfies it.
    #[serde(default)]
    outcomes_in: Vec<bool>,
}

/// The scenes every model is measured on: held-out colour-shape pairs (maps, loss, samples)
/// and in-distribution ones (samples).
struct EvalSets {
    held_out: ShapesSet,
    in_dist: ShapesSet,
}

impl EvalSets {
    /// `scenes` of each split, from the bench's `seed` (never the fine-tunes' training scenes,
    /// whose seeds are `seed + 100 + k`).
    fn new(scenes: usize, seed: u64) -> Result<Self> {
        Ok(Self {
            held_out: Self::held_out(scenes, seed)?,
            in_dist: eval_set(Split::Train, scenes, seed + 3000)?,
        })
    }

    /// The held-out scenes alone (the base model's teacher check).
    fn held_out(scenes: usize, seed: u64) -> Result<ShapesSet> {
        eval_set(Split::HeldOut, scenes, seed + 1000)
    }
}

/// `scenes` fresh scenes of `split` drawn from `seed`.
fn eval_set(split: Split, scenes: usize, seed: u64) -> Result<ShapesSet> {
    let shapes = ShapesConfig::new();
    let scenes = shapes.generate(split, scenes, seed)?;
    Ok(ShapesSet::new(scenes, shapes.size, &Vocab::default())?)
}

fn measure<B: AutodiffAttentionBackend>(
    model: &ShapesModel<B>,
    sets: &EvalSets,
    o: &BenchArgs,
    seed: u64,
    device: &B::Device,
) -> Result<Measured> {
    let arch = model.arch();
    let probe = AgreementProbe {
        levels: arch.levels(),
        schedule: arch.schedule(),
        config: o.ctcal(arch),
        batch: 32,
        seed: seed + 7,
    };
    let eval = &sets.held_out;
    let clock = Instant::now();
    let per_map = map_agreements(model, eval, &probe, device)?;
    let curve = level_summaries(&probe.levels, &per_map);
    let map_auroc = per_map
        .iter()
        .map(|maps| maps.iter().map(|(a, _)| a.auroc).collect())
        .collect();
    let t_curve = clock.elapsed().as_secs_f64();
    let large: Vec<_> = curve.iter().filter(|c| c.level >= arch.large_t()).collect();
    let mean = |f: &dyn Fn(&LevelAgreement) -> f32| {
        large.iter().map(|c| f(c) as f64).sum::<f64>() / large.len() as f64
    };
    let heldout_loss =
        ctcal_shapes::heldout_loss(model, eval, &arch.loss_levels(), seed + 8, device)?;
    let t_loss = clock.elapsed().as_secs_f64();
    let inner = burn::module::AutodiffModule::valid(model);
    let sample = |set: &ShapesSet, seed: u64| {
        ctcal_shapes::compbench_outcomes(&inner, set, o.sample_steps, o.guidance, seed, device)
    };
    let outcomes = sample(eval, seed + 9)?;
    let compbench = ctcal_shapes::compbench_shares(eval, &outcomes);
    let outcomes_in = sample(&sets.in_dist, seed + 10)?;
    let compbench_in = ctcal_shapes::compbench_shares(&sets.in_dist, &outcomes_in);
    Ok(Measured {
        large_t_mass: mean(&|c| c.mass_inside),
        large_t_iou: mean(&|c| c.iou),
        curve,
        heldout_loss,
        compbench,
        compbench_in,
        outcomes_in,
        seconds: [
            t_curve,
            t_loss - t_curve,
            clock.elapsed().as_secs_f64() - t_loss,
        ],
        map_auroc,
        outcomes,
    })
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

/// Measures the base model in `base_dir`, fine-tunes it `o.seeds` times per arm ([`ARMS`])
/// and reports.
pub fn bench<B: AutodiffAttentionBackend>(
    out: &Path,
    base_dir: &Path,
    o: &BenchArgs,
    backend: &str,
    seed: u64,
    device: &B::Device,
) -> Result<()> {
    let start = Instant::now();
    let load = || -> Result<ShapesModel<B>> { Ok(load_shapes_model(base_dir, device)?) };
    let arch = load()?.arch();
    println!("{arch} base model from {}", base_dir.display());
    println!("maps of: {}", o.ctcal(arch).layer_paths.join(", "));
    let eval = EvalSets::held_out(o.eval_scenes, seed)?;
    // The teacher first: do the base model's maps at small noise localise at all?
    let small = arch.levels()[0];
    let probe = AgreementProbe {
        levels: vec![small],
        schedule: arch.schedule(),
        config: o.ctcal(arch),
        batch: 32,
        seed: seed + 7,
    };
    let teacher = agreement_by_level(&load()?, &eval, &probe, device)?[0];
    println!(
        "base teacher maps at {} {small}: AUROC {:.3}, pointing game {:.3} (chance {:.3}), {} maps",
        arch.level_name(),
        teacher.auroc,
        teacher.pointing,
        teacher.chance,
        teacher.maps
    );
    if teacher.auroc < TEACHER_AUROC_MIN {
        let why = format!(
            "the base model's teacher maps do not localise (AUROC {:.3} < {TEACHER_AUROC_MIN} at {} \
             {small}): CTCal would copy maps near chance",
            teacher.auroc,
            arch.level_name()
        );
        if !o.weak_teacher {
            anyhow::bail!(
                "{why}; train a stronger base (`pretrain --resume` continues one) or pass \
                 --weak-teacher to fine-tune anyway"
            );
        }
        println!("warning: {why} (--weak-teacher)");
    }
    // One run per model, longest first: each (seed, arm) fine-tune with its measurement, then
    // the base model's measurement.
    let mut specs = Vec::new();
    for arm in ARMS {
        for k in 0..o.seeds() {
            specs.push(RunSpec::new(arm, k, base_dir, out, backend, seed, o));
        }
    }
    specs.push(RunSpec::new("base", 0, base_dir, out, backend, seed, o));
    let jobs = o
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, specs.len());
    println!(
        "{} runs, {jobs} at a time, under {}",
        specs.len(),
        out.join("runs").display()
    );
    run_all(&specs, jobs, start)?;
    let mut base = None;
    let mut runs: Vec<(String, u64, Measured, Vec<LossParts>)> = Vec::new();
    let mut shown: Vec<(String, ShapesModel<B>)> = vec![("base".into(), load()?)];
    for spec in &specs {
        let done = spec.read_result()?;
        if spec.arm == "base" {
            base = Some(done.measured);
            continue;
        }
        if spec.k == 0 {
            shown.push((
                format!("{} seed 0", spec.arm),
                load_shapes_model(&spec.dir, device)?,
            ));
        }
        runs.push((spec.arm.clone(), spec.k, done.measured, done.log));
    }
    runs.sort_by_key(|r| (ARMS.iter().rev().position(|a| *a == r.0), r.1));
    shown.sort_by_key(|(name, _)| (name != "base", !name.starts_with("plain")));
    let base = base.ok_or_else(|| anyhow::anyhow!("the base model's run is missing"))?;
    // Table: mean and standard deviation over seeds.
    let mut table = String::from(
        "| model | large-t mass inside | large-t IoU | held-out diffusion loss | colour binding | counting | spatial | shape | overall | overall, in-distribution |\n|---|---|---|---|---|---|---|---|---|---|\n",
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
        let overall_in = cell(
            ms.iter()
                .map(|m| m.compbench_in.get("overall").copied().unwrap_or(0.0))
                .collect(),
        );
        format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {overall_in} |\n",
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
    for arm in ARMS.iter().rev() {
        let ms: Vec<&Measured> = runs.iter().filter(|r| r.0 == *arm).map(|r| &r.2).collect();
        table += &row(&format!("{arm} fine-tune ({} seeds)", ms.len()), ms);
    }
    table += &paired_table(&runs, &arch.levels(), arch.large_t(), seed);
    println!("\n{table}");
    ctcal::weights::write_atomic(&out.join("table.md"), table.as_bytes())?;
    // Agreement curves: base, and each arm's mean over seeds.
    let levels = arch.levels();
    let mean_curve = |arm: &str| -> Vec<(f64, f64)> {
        levels
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
            label: "oracle".into(),
            points: mean_curve("oracle"),
            colour: COLOURS[4],
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
    let title = format!(
        "{arch}: map mass inside the noun's mask vs {}",
        arch.level_name()
    );
    let x_label = format!("noise level ({})", arch.level_name());
    let frame = LinePlot::new(title, x_label, "map mass inside the mask")
        .size(720, 440)
        .y_scale(YScale::Linear);
    let plot = line_plot(&frame, &series)?;
    ctcal::viz::save_png(&plot, &out.join("agreement.png"))?;
    figures(out, &eval, &shown, o, seed, device)?;
    let runs_json: Vec<_> = runs
        .iter()
        .map(|(arm, seed, m, log)| serde_json::json!({"arm": arm, "seed": seed, "measured": m, "loss": log}))
        .collect();
    write_json(
        &out.join("results.json"),
        &serde_json::json!({"arch": arch, "base": base, "teacher": teacher, "runs": runs_json, "seconds": start.elapsed().as_secs_f64()}),
    )
}

/// The arms against plain fine-tuning, paired over the same seeds, scenes, nouns and noise:
/// per-map AUROC differences at each level and over the large-noise levels (mean and 95%
/// bootstrap interval), and McNemar's test on the held-out captions' outcomes; CTCal's mean
/// difference as a fraction of the oracle's.
fn paired_table(
    runs: &[(String, u64, Measured, Vec<LossParts>)],
    levels: &[f64],
    large_t: f64,
    seed: u64,
) -> String {
    let of = |arm: &str, k: u64| runs.iter().find(|r| r.0 == arm && r.1 == k).map(|r| &r.2);
    let seeds: Vec<u64> = runs
        .iter()
        .filter(|r| r.0 == "plain")
        .map(|r| r.1)
        .collect();
    // Paired AUROC differences of `arm` against plain over the levels `pick` (indices), each
    // map's AUROC averaged over those levels first.
    let auroc_diffs = |arm: &str, pick: &[usize]| -> Vec<f64> {
        let mut diffs = Vec::new();
        for &k in &seeds {
            let (Some(a), Some(p)) = (of(arm, k), of("plain", k)) else {
                continue;
            };
            let maps = a.map_auroc.first().map_or(0, Vec::len);
            for m in 0..maps {
                let mean = |x: &Measured| -> Option<f64> {
                    let v: Vec<f64> = pick
                        .iter()
                        .filter_map(|&l| x.map_auroc.get(l)?.get(m).copied().flatten())
                        .map(f64::from)
                        .collect();
                    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
                };
                if let (Some(x), Some(y)) = (mean(a), mean(p)) {
                    diffs.push(x - y);
                }
            }
        }
        diffs
    };
    let outcomes = |arm: &str, in_dist: bool| -> Vec<bool> {
        seeds
            .iter()
            .filter_map(|&k| of(arm, k))
            .flat_map(|m| match in_dist {
                true => m.outcomes_in.clone(),
                false => m.outcomes.clone(),
            })
            .collect()
    };
    let bootstrap = |d: &[f64]| paired_bootstrap(d, 2000, seed ^ 0xb00);
    let ci = |b: &Option<PairedDiff>| match b {
        Some(c) => format!("{:+.3} [{:+.3}, {:+.3}]", c.mean, c.low, c.high),
        None => "n/a".into(),
    };
    // CTCal's effect as a share of the oracle's, where the oracle's effect is one: its
    // interval excludes 0 (otherwise the ratio of two noises).
    let fraction = |c: &Option<PairedDiff>, o: &Option<PairedDiff>| match (c, o) {
        (Some(c), Some(o)) if o.low > 0.0 || o.high < 0.0 => format!("{:.2}", c.mean / o.mean),
        (Some(_), Some(_)) => "n/a (oracle within noise)".into(),
        _ => "n/a".into(),
    };
    let mut s = String::from(
        "\nPaired against plain fine-tuning (same seeds, scenes, nouns, noise; 95% bootstrap intervals over the pairs):\n\n| level | ctcal - plain AUROC | oracle - plain AUROC | ctcal / oracle |\n|---|---|---|---|\n",
    );
    let mut rows: Vec<(String, Vec<usize>)> = levels
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("{l}"), vec![i]))
        .collect();
    let large: Vec<usize> = (0..levels.len())
        .filter(|&i| levels[i] >= large_t)
        .collect();
    rows.push((format!("large (>= {large_t})"), large));
    for (name, pick) in &rows {
        let c = bootstrap(&auroc_diffs("ctcal", pick));
        let o = bootstrap(&auroc_diffs("oracle", pick));
        s += &format!(
            "| {name} | {} | {} | {} |\n",
            ci(&c),
            ci(&o),
            fraction(&c, &o)
        );
    }
    s += "\n| captions | arm | right (arm) | right (plain) | arm only | plain only | McNemar p |\n|---|---|---|---|---|---|---|\n";
    for (captions, in_dist) in [("held-out", false), ("in-distribution", true)] {
        let plain = outcomes("plain", in_dist);
        for arm in ["ctcal", "oracle"] {
            let a = outcomes(arm, in_dist);
            if a.len() != plain.len() || a.is_empty() {
                continue;
            }
            let m = mcnemar(&a, &plain);
            let right = |v: &[bool]| v.iter().filter(|&&x| x).count();
            s += &format!(
                "| {captions} | {arm} | {} of {} | {} | {} | {} | {:.3} |\n",
                right(&a),
                a.len(),
                right(&plain),
                m.a_only,
                m.b_only,
                m.p_value
            );
        }
    }
    s
}

/// `samples.png`: the first eight held-out captions drawn by each shown model (first row: the
/// generator's own images), and `maps_<model>.png`: teacher | student noun maps of the first
/// four held-out scenes (at the architecture's preview levels: sigma 0.02 | 0.9, t 20 | 900).
fn figures<B: AutodiffAttentionBackend>(
    out: &Path,
    eval: &ShapesSet,
    shown: &[(String, ShapesModel<B>)],
    o: &BenchArgs,
    seed: u64,
    device: &B::Device,
) -> Result<()> {
    use burn::module::AutodiffModule;
    use ctcal::viz::{TextStyle, draw_text, save_png, stack_rows};
    use image::{Rgb, RgbImage};
    let n = eval.len().min(8);
    let s = eval.size;
    let tile = |rgb: Vec<u8>| -> Result<RgbImage> {
        let img = RgbImage::from_raw(s as u32, s as u32, rgb)
            .ok_or_else(|| anyhow::anyhow!("sample of the wrong size"))?;
        Ok(image::imageops::resize(
            &img,
            3 * s as u32,
            3 * s as u32,
            image::imageops::FilterType::Nearest,
        ))
    };
    let row = |label: &str, images: Vec<Vec<u8>>| -> Result<RgbImage> {
        let w = 3 * s as u32;
        let mut img = RgbImage::from_pixel(n as u32 * (w + 4), w + 22, Rgb([255, 255, 255]));
        draw_text(&mut img, 2, 2, label, TextStyle::new(14.0));
        for (i, rgb) in images.into_iter().enumerate() {
            image::imageops::replace(&mut img, &tile(rgb)?, i as i64 * (w as i64 + 4), 22);
        }
        Ok(img)
    };
    let truth: Vec<Vec<u8>> = (0..n)
        .map(|i| ctcal_shapes::render(&eval.scenes[i], s).rgb)
        .collect();
    let mut rows = vec![row("held-out captions, ground truth", truth)?];
    let ids: Vec<Vec<usize>> = eval.ids[..n].to_vec();
    for (name, model) in shown {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed + 11);
        let noise = ctcal::nn::normal_tensor(&mut rng, [n, 3, s, s], device);
        let images = ctcal_shapes::sample_images(
            &model.valid(),
            &ids,
            eval,
            noise,
            o.sample_steps,
            o.guidance,
        )?;
        rows.push(row(name, images)?);
    }
    save_png(&stack_rows(&rows), &out.join("samples.png"))?;
    // Teacher | student maps.
    let k = eval.len().min(4);
    let index: Vec<usize> = (0..k).collect();
    let b = eval.batch::<B>(&index, &[], device)?;
    let captions: Vec<String> = eval.scenes[..k].iter().map(|sc| sc.caption()).collect();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed + 12);
    let noise = ctcal::nn::normal_tensor(&mut rng, [k, 3, s, s], device);
    for (name, model) in shown {
        let arch = model.arch();
        let (teacher, student) = arch.preview_levels();
        let data = ctcal::calibration::TrainBatch {
            latents: b.pixels.clone(),
            cond: model.encode(&b.ids, device)?,
            nouns: b.nouns.clone(),
            teacher: None,
        };
        let img = ctcal::train::map_preview(
            &model.denoiser,
            &data,
            &captions,
            &[],
            noise.clone(),
            &arch.schedule(),
            &o.ctcal(arch),
            teacher,
            student,
        )?;
        save_png(
            &img,
            &out.join(format!("maps_{}.png", name.replace(' ', "_"))),
        )?;
    }
    Ok(())
}

/// One run of the bench, done by a child process from this spec (`runs/<name>/spec.json`).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct RunSpec {
    /// `base` (measure the base model), `plain` or `ctcal` (fine-tune, then measure).
    arm: String,
    /// Seed index of a fine-tune: its data and training seed.
    k: u64,
    /// The base model folder.
    base: PathBuf,
    /// The run's folder: the spec, the fine-tuned model and `result.json`.
    dir: PathBuf,
    /// The backend the child runs on (`--backend`).
    backend: String,
    /// The bench's seed.
    seed: u64,
    /// The bench's settings.
    args: BenchArgs,
}

/// What a run writes to `result.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunResult {
    measured: Measured,
    /// Training losses per step (empty for the base model).
    log: Vec<LossParts>,
    /// Seconds spent fine-tuning.
    train_seconds: f64,
}

impl RunSpec {
    fn new(
        arm: &str,
        k: u64,
        base: &Path,
        out: &Path,
        backend: &str,
        seed: u64,
        args: &BenchArgs,
    ) -> Self {
        let name = if arm == "base" {
            "base".to_string()
        } else {
            format!("{arm}-seed{k}")
        };
        RunSpec {
            arm: arm.to_string(),
            k,
            base: base.to_path_buf(),
            dir: out.join("runs").join(name),
            backend: backend.to_string(),
            seed,
            args: args.clone(),
        }
    }

    fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Writes the spec and starts `this binary run <spec>` (stdout and stderr shared).
    fn spawn(&self) -> Result<std::process::Child> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        // A result from an earlier bench must not stand in for this run's.
        let _ = std::fs::remove_file(self.dir.join("result.json"));
        let path = self.dir.join("spec.json");
        write_json(&path, self)?;
        let exe = std::env::current_exe().context("locating the shapes_bench binary")?;
        std::process::Command::new(exe)
            .args(["--backend", &self.backend, "run"])
            .arg(&path)
            .spawn()
            .with_context(|| format!("starting the run {}", self.name()))
    }

    fn read_result(&self) -> Result<RunResult> {
        let path = self.dir.join("result.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Runs every spec as a child process, `jobs` at a time; the first failure is the error
/// (after the running ones end).
fn run_all(specs: &[RunSpec], jobs: usize, start: Instant) -> Result<()> {
    let mut pending = specs.iter();
    let mut running: Vec<(&RunSpec, std::process::Child)> = Vec::new();
    let mut failed: Option<anyhow::Error> = None;
    loop {
        while failed.is_none() && running.len() < jobs {
            match pending.next() {
                Some(spec) => match spec.spawn() {
                    Ok(child) => running.push((spec, child)),
                    Err(e) => failed = Some(e),
                },
                None => break,
            }
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut still = Vec::new();
        for (spec, mut child) in running {
            match child.try_wait() {
                Ok(None) => still.push((spec, child)),
                Ok(Some(status)) if status.success() => println!(
                    "run {} done ({:.0} s)",
                    spec.name(),
                    start.elapsed().as_secs_f64()
                ),
                Ok(Some(status)) => {
                    failed.get_or_insert(anyhow::anyhow!("run {} failed: {status}", spec.name()));
                }
                Err(e) => {
                    failed.get_or_insert(anyhow::anyhow!("run {}: {e}", spec.name()));
                }
            }
        }
        running = still;
    }
    failed.map_or(Ok(()), Err)
}

/// The child process's side: reads the spec at `path`, fine-tunes (unless `base`), measures,
/// and writes the model (fine-tunes) and `result.json` into the run's folder.
pub fn run<B: AutodiffAttentionBackend>(path: &Path, device: &B::Device) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let spec: RunSpec =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let o = &spec.args;
    let vocab = Vocab::default();
    let shapes = ShapesConfig::new();
    let sets = EvalSets::new(o.eval_scenes, spec.seed)?;
    let model: ShapesModel<B> = load_shapes_model(&spec.base, device)?;
    let arch = model.arch();
    let clock = Instant::now();
    let (model, log) = if spec.arm == "base" {
        (model, Vec::new())
    } else {
        let lambda = match spec.arm.as_str() {
            "plain" => 0.0,
            "ctcal" | "oracle" => 1.0,
            other => anyhow::bail!("{}: unknown arm {other:?}", path.display()),
        };
        let data = ShapesSet::new(
            shapes.generate(Split::Train, 2000, spec.seed + 100 + spec.k)?,
            shapes.size,
            &vocab,
        )?;
        let mut run = TrainRun::finetune(
            o.steps,
            o.batch,
            o.lr,
            o.rank,
            o.ctcal(arch).with_lambda_ctcal(lambda),
        );
        run.seed = spec.seed + spec.k;
        run.oracle = spec.arm == "oracle";
        let mut log = Vec::with_capacity(o.steps);
        let config = ShapesModelConfig::read(&spec.base.join("base_config.json"))?;
        let train_dir = spec.dir.join("train");
        let model = train_shapes(
            model,
            &config,
            Arc::new(data),
            &run,
            &train_dir,
            false,
            device,
            |step| log.push(step.loss),
        )?;
        model.save_dir(&config, &spec.dir)?;
        (model, log)
    };
    let train_seconds = clock.elapsed().as_secs_f64();
    let m = measure(&model, &sets, o, spec.seed, device)?;
    let name = spec.name();
    println!(
        "{name:<12}: large-t mass {:.3}, iou {:.3}, held-out loss {:.4}, compbench {:?}; \
         train {train_seconds:.0} s, curve {:.0} s, loss {:.0} s, samples {:.0} s",
        m.large_t_mass,
        m.large_t_iou,
        m.heldout_loss,
        m.compbench,
        m.seconds[0],
        m.seconds[1],
        m.seconds[2],
    );
    write_json(
        &spec.dir.join("result.json"),
        &RunResult {
            measured: m,
            log,
            train_seconds,
        },
    )
}
