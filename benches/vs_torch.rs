//! The crate's side of `scripts/bench_vs_torch.sh`: one UNet workload of one model, timed in
//! this process alone (so the caller can read its peak RSS), on inputs PyTorch can load.
//!
//! ```text
//! cargo bench --bench vs_torch --no-run          # builds target/release/deps/vs_torch-*
//! vs_torch --model shapes-unet|tiny-sd21 --workload forward|plain|ctcal --iters N \
//!     [--backend ndarray] [--write-inputs inputs.safetensors | --read-inputs inputs.safetensors]
//! ```
//!
//! Models: `weights/shapes-unet` (the shapes UNet, 32x32 RGB pixels of `weights/shapes-data`,
//! captions through its own text encoder, batch 16) and `weights/tiny-sd21` (the tiny diffusers
//! pipeline: 64x64 images of `weights/tiny-data/images` through its VAE to 4x32x32 latents,
//! captions through its CLIP, batch 2). Workloads:
//! - `forward`: the base UNet's forward on the inner backend, no hooks, no graph, batch 2;
//! - `plain`: LoRA (rank 4 on `to_q`, `to_k`, `to_v`, `to_out.0`) and one optimiser step:
//!   `ctcal_step` with `lambda_ctcal = 0` (no teacher, no hooks), backward, AdamW;
//! - `ctcal`: the same with the CTCal loss (teacher forward without graph, hooked student, map
//!   loss) and the map auto-encoder trained by its own AdamW.
//!
//! AdamW: lr 1e-4, weight decay 1e-2, epsilon 1e-8 (the trainer's defaults), no clipping.
//!
//! Prints, after one warm-up iteration (the first step) and `--iters` timed ones:
//! `rss_loaded <KiB>` (peak RSS before the first step: model and inputs loaded),
//! `time <median seconds>`, `loss <total> <diffusion> <ctcal>` of the first iteration,
//! `parts <pixel> <semantic> <recon> <balance>` of it, and `loss2 ...` of the second (after one
//! optimiser step).
//!
//! `--write-inputs` saves everything the step reads: latents, text hidden states, noise,
//! student and teacher levels, noun groups, the CTCal config, the captured attention sites, the
//! LoRA adapters' initial values (PyTorch layout) and the map auto-encoder's initial weights.
//! `--read-inputs` runs on such a file (no pipeline loaded: only the UNet), as the PyTorch side
//! (`scripts/bench_torch.py`) does.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Param};
use burn::nn::conv::Conv2d;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use common::{arg, flag};
use ctcal::attention::{AttentionStore, AutodiffAttentionBackend, NoHook};
use ctcal::calibration::{
    CtcalConfig, LossParts, MapAutoEncoder, StepDraw, TrainBatch, ctcal_step,
};
use ctcal::data::{BadRowPolicy, BadRows, Batch, DataCursor, Dataset, ImageFolder};
use ctcal::denoiser::{Denoiser, TextCond};
use ctcal::launch::{BackendKind, OnAutodiffBackend, launch_autodiff};
use ctcal::lora::{LoraConfig, LoraTarget, apply_lora};
use ctcal::nn::normal_tensor;
use ctcal::nouns::NounGroups;
use ctcal::pipeline::StableDiffusion;
use ctcal::pipeline::shapes::load_shapes_pipeline;
use ctcal::schedule::{DdpmConfig, Schedule};
use ctcal::train::{TrainConfig, TrainInputs};
use ctcal::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use ctcal::weights::{TensorEntry, TensorFile, load_module, to_entry, write_tensor_file};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Seed of the data draw, the LoRA initialisation and the backend RNG.
const SEED: u64 = 7;
/// LoRA rank (alpha = rank: scale 1).
const RANK: usize = 4;
const LR: f64 = 1e-4;
const WEIGHT_DECAY: f32 = 1e-2;
const EPSILON: f32 = 1e-8;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Model {
    ShapesUnet,
    TinySd21,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Workload {
    Forward,
    Plain,
    Ctcal,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Self::ShapesUnet => "shapes-unet",
            Self::TinySd21 => "tiny-sd21",
        }
    }

    /// Batch of the training workloads.
    fn train_batch(self) -> usize {
        match self {
            Self::ShapesUnet => 16,
            Self::TinySd21 => 2,
        }
    }
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Plain => "plain",
            Self::Ctcal => "ctcal",
        }
    }
}

struct Opts {
    model: Model,
    workload: Workload,
    iters: usize,
    backend: BackendKind,
    write: Option<PathBuf>,
    read: Option<PathBuf>,
    root: PathBuf,
}

fn usage(message: &str) -> ! {
    eprintln!(
        "vs_torch: {message}\nusage: vs_torch --model shapes-unet|tiny-sd21 \
         --workload forward|plain|ctcal [--iters N] [--backend ndarray|wgpu|cuda] \
         [--write-inputs FILE | --read-inputs FILE] [--root REPO]"
    );
    std::process::exit(2)
}

impl Opts {
    fn from_args() -> Self {
        let model = match arg("--model").as_deref() {
            Some("shapes-unet") => Model::ShapesUnet,
            Some("tiny-sd21") => Model::TinySd21,
            Some(other) => usage(&format!("unknown --model {other:?}")),
            None => usage("--model is required"),
        };
        let workload = match arg("--workload").as_deref() {
            Some("forward") => Workload::Forward,
            Some("plain") => Workload::Plain,
            Some("ctcal") => Workload::Ctcal,
            Some(other) => usage(&format!("unknown --workload {other:?}")),
            None => usage("--workload is required"),
        };
        let iters = match arg("--iters") {
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| usage(&format!("--iters {v:?} is not a positive integer"))),
            None => 5,
        };
        let backend = arg("--backend")
            .unwrap_or_else(|| "ndarray".into())
            .parse()
            .unwrap_or_else(|e: ctcal::Error| usage(&e.to_string()));
        let write = arg("--write-inputs").map(PathBuf::from);
        let read = arg("--read-inputs").map(PathBuf::from);
        if write.is_some() && read.is_some() {
            usage("--write-inputs and --read-inputs exclude each other");
        }
        if flag("--write-inputs") && write.is_none() || flag("--read-inputs") && read.is_none() {
            usage("--write-inputs / --read-inputs need a file name");
        }
        // Benches run from the package root under cargo; the binary may be run from anywhere.
        let root = arg("--root")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        Opts {
            model,
            workload,
            iters,
            backend,
            write,
            read,
            root,
        }
    }

    fn batch(&self) -> usize {
        match self.workload {
            Workload::Forward => 2,
            _ => self.model.train_batch(),
        }
    }
}

fn main() {
    let opts = Opts::from_args();
    struct Run(Opts);
    impl OnAutodiffBackend for Run {
        type Output = ctcal::Result<()>;
        fn run<B: AutodiffAttentionBackend>(self, device: &B::Device) -> ctcal::Result<()> {
            run::<B>(&self.0, device)
        }
    }
    let kind = opts.backend;
    if let Err(e) = launch_autodiff(kind, false, Run(opts)).and_then(|r| r) {
        eprintln!("vs_torch: {e}");
        std::process::exit(1);
    }
}

/// The model's UNet and training settings.
struct Loaded<B: AutodiffAttentionBackend> {
    unet: UNet2DConditionModel<B>,
    ctcal: CtcalConfig,
    lora: LoraConfig,
    schedule: Schedule,
}

fn run<B: AutodiffAttentionBackend>(o: &Opts, device: &B::Device) -> ctcal::Result<()> {
    B::seed(device, SEED);
    let t0 = Instant::now();
    let n = o.batch();
    let (loaded, data, draw, file) = match &o.read {
        Some(path) => {
            let file = TensorFile::read(path)?;
            check_meta(&file, o)?;
            let loaded = load_unet::<B>(o, device)?;
            let (data, draw) = read_inputs::<B>(&file, device)?;
            (loaded, data, draw, Some(file))
        }
        None => {
            let (loaded, data) = load_with_pipeline::<B>(o, n, device)?;
            let mut rng = StdRng::seed_from_u64(SEED);
            let student = loaded.schedule.sample_levels(&mut rng, n);
            let teacher =
                loaded
                    .ctcal
                    .teacher
                    .teacher_levels(&loaded.schedule, &student, &mut rng)?;
            let draw = StepDraw {
                noise: normal_tensor(&mut rng, data.latents.dims(), device),
                student,
                teacher,
            };
            (loaded, data, draw, None)
        }
    };
    let [b, c, h, w] = data.latents.dims();
    eprintln!(
        "{} {}: batch {b}, input {c}x{h}x{w}, text {:?}, loaded in {:.1} s on {}",
        o.model.name(),
        o.workload.name(),
        data.cond.hidden.dims(),
        t0.elapsed().as_secs_f64(),
        B::name(device)
    );
    let Loaded {
        unet,
        ctcal,
        lora,
        schedule,
    } = loaded;
    let sites = captured_sites(&unet, &data, &draw, &schedule, &ctcal)?;
    eprintln!("CTCal sites ({}): {}", sites.len(), sites.join(", "));
    if sites.is_empty() {
        return Err(ctcal::Error::Config(format!(
            "{}: the CTCal layer selection captures no cross-attention layer",
            o.model.name()
        )));
    }

    if o.workload == Workload::Forward {
        if let Some(path) = &o.write {
            write_inputs(path, o, &data, &draw, &ctcal, &sites, BTreeMap::new())?;
        }
        return forward(o, &unet, &data, &draw, &schedule, device);
    }

    // LoRA adapters (and, from a file, its initial values) and the map auto-encoder.
    let (mut unet, report) = apply_lora(unet, &lora, SEED)?;
    let mut ae = ctcal.autoencoder.init::<B>(device);
    if let Some(file) = &file {
        unet = set_adapters(unet, file, device)?;
        ae = set_autoencoder(ae, file, device)?;
    }
    eprintln!(
        "LoRA: {} projections, {} trainable parameters, {} frozen",
        report.adapters(),
        report.trainable_params,
        report.frozen_params
    );
    if let Some(path) = &o.write {
        let mut extra = adapter_entries(&unet);
        extra.extend(autoencoder_entries(&ae));
        write_inputs(path, o, &data, &draw, &ctcal, &sites, extra)?;
    }
    let config = match o.workload {
        Workload::Plain => ctcal.with_lambda_ctcal(0.0),
        _ => ctcal,
    };
    let with_ae = config.lambda_ctcal != 0.0;
    let adamw = AdamWConfig::new()
        .with_weight_decay(WEIGHT_DECAY)
        .with_epsilon(EPSILON);
    let mut optim = adamw.init::<B, UNet2DConditionModel<B>>();
    let mut optim_ae = adamw.init::<B, MapAutoEncoder<B>>();
    let mut model = Some(unet);
    let mut ae = Some(ae);
    let mut step = || -> ctcal::Result<LossParts> {
        let (m, a) = (model.take().expect("model"), ae.take().expect("ae"));
        let out = ctcal_step(&m, &a, &data, &draw, &schedule, &config)?;
        let mut grads = out.loss.backward();
        let g = GradientsParams::from_module(&mut grads, &m);
        model = Some(optim.step(LR, m, g));
        ae = Some(if with_ae {
            let g = GradientsParams::from_module(&mut grads, &a);
            optim_ae.step(LR, a, g)
        } else {
            a
        });
        let _ = B::sync(device);
        Ok(out.parts)
    };
    timed(o.iters, &mut step)
}

/// Runs `step` once as warm-up, then `iters` times; prints the median time and the losses of
/// the first two iterations.
fn timed(iters: usize, step: &mut impl FnMut() -> ctcal::Result<LossParts>) -> ctcal::Result<()> {
    let loaded = peak_rss_kib();
    let t = Instant::now();
    let first = step()?;
    let warm = t.elapsed().as_secs_f64();
    let mut second = None;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let parts = step()?;
        times.push(t.elapsed().as_secs_f64());
        second.get_or_insert(parts);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let list: Vec<String> = times.iter().map(|t| format!("{t:.4}")).collect();
    println!("rss_loaded {loaded}");
    println!("warmup {warm:.4}");
    println!("times {}", list.join(" "));
    println!("time {median:.6}");
    let line = |p: &LossParts| format!("{:.9e} {:.9e} {:.9e}", p.total, p.diffusion, p.ctcal);
    println!("loss {}", line(&first));
    println!(
        "parts {:.9e} {:.9e} {:.9e} {:.9e}",
        first.pixel, first.semantic, first.recon, first.balance
    );
    if let Some(p) = second {
        println!("loss2 {}", line(&p));
    }
    Ok(())
}

/// Peak resident memory of this process so far in KiB (Linux `VmHWM`; 0 where unknown).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The UNet forward without hooks or graph on the noisy student inputs; the "loss" is the MSE
/// against the target, to compare outputs.
fn forward<B: AutodiffAttentionBackend>(
    o: &Opts,
    unet: &UNet2DConditionModel<B>,
    data: &TrainBatch<B>,
    draw: &StepDraw<B>,
    schedule: &Schedule,
    device: &B::Device,
) -> ctcal::Result<()> {
    let inner = unet.valid();
    let x0 = data.latents.clone().inner();
    let noise = draw.noise.clone().inner();
    let noisy = schedule.noisy(x0.clone(), noise.clone(), &draw.student)?;
    let target = schedule.target(x0, noise, &draw.student)?;
    let t = timesteps::<B::InnerBackend>(schedule, &draw.student, device);
    let cond = data.cond.clone().inner();
    let mut step = || -> ctcal::Result<LossParts> {
        let pred = inner.denoise(noisy.clone(), t.clone(), &cond, &mut NoHook)?;
        let mse = (pred - target.clone())
            .powi_scalar(2)
            .mean()
            .into_scalar()
            .elem::<f64>();
        Ok(LossParts {
            total: mse,
            diffusion: mse,
            ..LossParts::default()
        })
    };
    timed(o.iters, &mut step)
}

fn timesteps<B: Backend>(schedule: &Schedule, levels: &[f64], device: &B::Device) -> Tensor<B, 1> {
    let values = schedule.model_timesteps(levels);
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// The diffusers paths of the attention layers `config` supervises, from one hooked teacher
/// forward (no graph).
fn captured_sites<B: AutodiffAttentionBackend>(
    unet: &UNet2DConditionModel<B>,
    data: &TrainBatch<B>,
    draw: &StepDraw<B>,
    schedule: &Schedule,
    config: &CtcalConfig,
) -> ctcal::Result<Vec<String>> {
    let device = data.latents.device();
    let one = |x: Tensor<B, 4>| x.narrow(0, 0, 1).inner();
    let noisy = schedule.noisy(
        one(data.latents.clone()),
        one(draw.noise.clone()),
        &draw.teacher[..1],
    )?;
    let t = timesteps::<B::InnerBackend>(schedule, &draw.teacher[..1], &device);
    let cond = TextCond {
        hidden: data.cond.hidden.clone().narrow(0, 0, 1).inner(),
        pooled: None,
    };
    let mut store = AttentionStore::new(config.site_filter(unet.map_kind()));
    unet.valid().denoise(noisy, t, &cond, &mut store)?;
    Ok(store.take().iter().map(|m| m.site.path()).collect())
}

// ---------------------------------------------------------------------------------------------
// Models and inputs
// ---------------------------------------------------------------------------------------------

fn settings(
    model: Model,
    arch: Option<ctcal::pipeline::shapes::ShapesArch>,
) -> (CtcalConfig, LoraConfig, Schedule) {
    match (model, arch) {
        (Model::ShapesUnet, Some(arch)) => (arch.ctcal(), arch.lora(RANK), arch.schedule()),
        _ => (
            // The tiny UNet's 32x32 latents: grids at 1/2 and 1/4 hold down_blocks.1,
            // mid_block and up_blocks.1; maps compared on 8x8.
            CtcalConfig::sd21(),
            LoraConfig::unet_default().with_rank(RANK),
            Schedule::Ddpm(DdpmConfig::sd21().init()),
        ),
    }
}

/// Only the UNet (inputs come from a file).
fn load_unet<B: AutodiffAttentionBackend>(
    o: &Opts,
    device: &B::Device,
) -> ctcal::Result<Loaded<B>> {
    match o.model {
        Model::ShapesUnet => {
            let dir = o.root.join("weights/shapes-unet");
            let (pipe, unet) = load_shapes_pipeline::<B, UNet2DConditionModel<B>>(&dir, device)?;
            let (ctcal, lora, schedule) = settings(o.model, Some(pipe.arch));
            Ok(Loaded {
                unet,
                ctcal,
                lora,
                schedule,
            })
        }
        Model::TinySd21 => {
            let dir = o.root.join("weights/tiny-sd21/unet");
            let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json"))?;
            let (unet, _) = load_module(config.init::<B>(device), &dir, None)?;
            let (ctcal, lora, schedule) = settings(o.model, None);
            Ok(Loaded {
                unet,
                ctcal,
                lora,
                schedule,
            })
        }
    }
}

/// The UNet and a batch made by the model's pipeline from its bundled images and captions.
fn load_with_pipeline<B: AutodiffAttentionBackend>(
    o: &Opts,
    n: usize,
    device: &B::Device,
) -> ctcal::Result<(Loaded<B>, TrainBatch<B>)> {
    match o.model {
        Model::ShapesUnet => {
            let dir = o.root.join("weights/shapes-unet");
            let (pipe, unet) = load_shapes_pipeline::<B, UNet2DConditionModel<B>>(&dir, device)?;
            let (ctcal, lora, schedule) = settings(o.model, Some(pipe.arch));
            let meta = o.root.join("weights/shapes-data/metadata.jsonl");
            let batch = image_batch(&meta, pipe.size as u32, n)?;
            let config = TrainConfig::new(ctcal.clone()).with_sample_posterior(false);
            let data = pipe.train_batch(&unet, &batch, &config, device)?;
            let loaded = Loaded {
                unet,
                ctcal,
                lora,
                schedule,
            };
            Ok((loaded, data))
        }
        Model::TinySd21 => {
            let dir = o.root.join("weights/tiny-sd21");
            let pipe = StableDiffusion::<B::InnerBackend>::load(&dir, None, device)?;
            let loaded = load_unet::<B>(o, device)?;
            // The VAE halves the side: 64x64 images, 32x32 latents (the UNet's sample_size).
            let side = 2 * pipe.sample_size as u32;
            let meta = o.root.join("weights/tiny-data/images/metadata.jsonl");
            let batch = image_batch(&meta, side, n)?;
            let config = TrainConfig::new(loaded.ctcal.clone()).with_sample_posterior(false);
            let data = pipe.train_batch(&loaded.unet, &batch, &config, device)?;
            Ok((loaded, data))
        }
    }
}

/// The first `n` rows of an image folder as one batch.
fn image_batch(meta: &Path, resolution: u32, n: usize) -> ctcal::Result<Batch> {
    let folder = ImageFolder::open(meta, resolution, BadRowPolicy::Fail)?;
    if folder.len() < n {
        return Err(ctcal::Error::Input(format!(
            "{}: {} rows, the batch needs {n}",
            meta.display(),
            folder.len()
        )));
    }
    let samples = (0..n)
        .map(|i| {
            folder
                .load(i)
                .map_err(|e| ctcal::Error::Input(e.to_string()))
        })
        .collect::<ctcal::Result<Vec<_>>>()?;
    let cursor = DataCursor {
        seed: SEED,
        epoch: 0,
        position: n,
        len: folder.len(),
    };
    Batch::collate(samples, 0, cursor, BadRows::default())
}

fn check_meta(file: &TensorFile, o: &Opts) -> ctcal::Result<()> {
    for (key, want) in [("model", o.model.name()), ("workload", o.workload.name())] {
        let have = file.metadata.get(key).map(String::as_str);
        if have != Some(want) {
            return Err(ctcal::Error::Input(format!(
                "{}: written for {key} {have:?}, this run is {want}",
                file.path
            )));
        }
    }
    Ok(())
}

fn read_inputs<B: AutodiffAttentionBackend>(
    file: &TensorFile,
    device: &B::Device,
) -> ctcal::Result<(TrainBatch<B>, StepDraw<B>)> {
    let levels = |name: &str| -> ctcal::Result<Vec<f64>> {
        let t: Tensor<B, 1> = file.tensor(name, device)?;
        Ok(t.into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap_or_default())
    };
    let nouns_json = file
        .metadata
        .get("nouns")
        .ok_or_else(|| ctcal::Error::Input(format!("{}: no \"nouns\" metadata", file.path)))?;
    let nouns: Vec<Vec<Vec<usize>>> = serde_json::from_str(nouns_json)
        .map_err(|e| ctcal::Error::Input(format!("{}: nouns: {e}", file.path)))?;
    let data = TrainBatch {
        latents: file.tensor("latents", device)?,
        cond: TextCond {
            hidden: file.tensor("hidden", device)?,
            pooled: None,
        },
        nouns: nouns.into_iter().map(NounGroups).collect(),
        teacher: None,
    };
    let draw = StepDraw {
        noise: file.tensor("noise", device)?,
        student: levels("student")?,
        teacher: levels("teacher")?,
    };
    Ok((data, draw))
}

fn write_inputs<B: AutodiffAttentionBackend>(
    path: &Path,
    o: &Opts,
    data: &TrainBatch<B>,
    draw: &StepDraw<B>,
    ctcal: &CtcalConfig,
    sites: &[String],
    extra: BTreeMap<String, TensorEntry>,
) -> ctcal::Result<()> {
    let levels = |v: &[f64]| (vec![v.len()], v.iter().map(|&x| x as f32).collect());
    let mut tensors = extra;
    tensors.insert("latents".into(), to_entry(data.latents.clone()));
    tensors.insert("hidden".into(), to_entry(data.cond.hidden.clone()));
    tensors.insert("noise".into(), to_entry(draw.noise.clone()));
    tensors.insert("student".into(), levels(&draw.student));
    tensors.insert("teacher".into(), levels(&draw.teacher));
    let nouns: Vec<&Vec<Vec<usize>>> = data.nouns.iter().map(|g| &g.0).collect();
    let metadata = HashMap::from([
        ("model".to_string(), o.model.name().to_string()),
        ("workload".to_string(), o.workload.name().to_string()),
        ("nouns".to_string(), json(&nouns)),
        ("ctcal".to_string(), json(ctcal)),
        ("sites".to_string(), json(&sites)),
        ("lr".to_string(), LR.to_string()),
        ("weight_decay".to_string(), WEIGHT_DECAY.to_string()),
        ("epsilon".to_string(), EPSILON.to_string()),
        ("rank".to_string(), RANK.to_string()),
    ]);
    write_tensor_file(path, &tensors, Some(metadata))?;
    eprintln!("wrote {} ({} tensors)", path.display(), tensors.len());
    Ok(())
}

/// `value` as a JSON string (the values here always serialise).
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("serialisable")
}

/// `lora.<path>.lora_A` (`[rank, in]`) and `.lora_B` (`[out, rank]`) of every adapter, in
/// PyTorch's layout.
fn adapter_entries<B: Backend>(unet: &UNet2DConditionModel<B>) -> BTreeMap<String, TensorEntry> {
    let mut out = BTreeMap::new();
    unet.visit_lora(&mut |path, layer| {
        if let (Some(a), Some(b)) = (&layer.lora_a, &layer.lora_b) {
            out.insert(
                format!("lora.{path}.lora_A"),
                to_entry(a.weight.val().transpose()),
            );
            out.insert(
                format!("lora.{path}.lora_B"),
                to_entry(b.weight.val().transpose()),
            );
        }
    });
    out
}

/// Replaces every adapter by the file's initial values.
fn set_adapters<B: Backend>(
    unet: UNet2DConditionModel<B>,
    file: &TensorFile,
    device: &B::Device,
) -> ctcal::Result<UNet2DConditionModel<B>> {
    let mut error = None;
    let unet = unet.map_lora(&mut |path, layer| {
        if error.is_some() || !layer.has_adapter() {
            return layer;
        }
        let get = |s: &str| file.tensor::<B, 2>(&format!("lora.{path}.{s}"), device);
        match (get("lora_A"), get("lora_B")) {
            (Ok(a), Ok(b)) => {
                let scale = layer.scale;
                match layer
                    .clone()
                    .with_adapter(a.transpose(), b.transpose(), scale)
                {
                    Ok(l) => l,
                    Err(e) => {
                        error = Some(e);
                        layer
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                error = Some(e);
                layer
            }
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok(unet),
    }
}

fn autoencoder_entries<B: Backend>(ae: &MapAutoEncoder<B>) -> BTreeMap<String, TensorEntry> {
    let mut out = BTreeMap::new();
    for (name, conv) in [
        ("enc1", &ae.enc1),
        ("enc2", &ae.enc2),
        ("dec1", &ae.dec1),
        ("dec2", &ae.dec2),
    ] {
        out.insert(format!("ae.{name}.weight"), to_entry(conv.weight.val()));
        if let Some(bias) = &conv.bias {
            out.insert(format!("ae.{name}.bias"), to_entry(bias.val()));
        }
    }
    out
}

fn set_autoencoder<B: Backend>(
    ae: MapAutoEncoder<B>,
    file: &TensorFile,
    device: &B::Device,
) -> ctcal::Result<MapAutoEncoder<B>> {
    let set = |conv: Conv2d<B>, name: &str| -> ctcal::Result<Conv2d<B>> {
        let weight = file.tensor::<B, 4>(&format!("ae.{name}.weight"), device)?;
        let bias = file.tensor::<B, 1>(&format!("ae.{name}.bias"), device)?;
        Ok(Conv2d {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
            ..conv
        })
    };
    Ok(MapAutoEncoder {
        enc1: set(ae.enc1, "enc1")?,
        enc2: set(ae.enc2, "enc2")?,
        dec1: set(ae.dec1, "dec1")?,
        dec2: set(ae.dec2, "dec2")?,
        input_size: ae.input_size,
    })
}
