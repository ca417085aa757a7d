//! Fine-tunes an SD 2.1 UNet with CTCal: LoRA on the attention projections (or every weight
//! with `--full`), the diffusion loss plus the CTCal loss with teacher maps at a small timestep.
//!
//! With no arguments it fine-tunes the trained shapes UNet shipped in `weights/shapes-unet`
//! (pixel space, word-level text encoder; see `ctcal::shapes`) on the bundled shapes images
//! `weights/shapes-data` on the CPU. A diffusers SD 2.x pipeline folder (`--pipeline`, e.g.
//! the tiny random one in `weights/tiny-sd21`) trains the same way:
//!
//! ```text
//! cargo run --release --example train_sd21
//! cargo run --release --example train_sd21 -- --pipeline weights/tiny-sd21
//! cargo run --release --example train_sd21 -- --model path/to/unet --data path/to/features \
//!     --backend cuda --steps 2000 --batch-size 8 --lr 1e-4 --rank 4 --out out/my_run
//! cargo run --release --example train_sd21 -- --out out/my_run --resume   # after a crash
//! ```
//! Writes `checkpoints/`, `metrics.jsonl`, `pytorch_lora_weights.safetensors` (diffusers'
//! `pipe.load_lora_weights(out)` takes it; `unet/` with `--full`) and the map auto-encoder.

mod common;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use common::train::{DiffusersModel, TrainArgs, fit_pipeline, fit_shapes};
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::calibration::{CtcalConfig, TeacherRule};
use ctcal::launch::{OnAutodiffBackend, launch_autodiff};
use ctcal::lora::LoraConfig;
use ctcal::pipeline::StableDiffusion;
use ctcal::pipeline::shapes::is_shapes_model;
use ctcal::schedule::{DdpmConfig, Schedule};
use ctcal::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use ctcal::weights::load_module;

/// What the UNet predicts (the scheduler's `prediction_type`).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Prediction {
    /// SD 2.1 (768 px): velocity.
    VPrediction,
    /// SD 2.1-base (512 px): noise.
    Epsilon,
}

/// Fine-tune an SD 2.1 UNet with CTCal.
#[derive(Parser, Debug)]
struct Cli {
    /// A diffusers SD 2.x pipeline folder (its tokenizer, text encoder and VAE encode
    /// image-folder data and render validation images; its `unet/` is trained) or a shapes
    /// UNet model folder (`base_config.json`, `base.safetensors`).
    #[arg(long, default_value = "weights/shapes-unet")]
    pipeline: PathBuf,
    /// Train this `unet/` folder instead of the pipeline's.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The teacher's timestep (the method's default is 0: the least noisy).
    #[arg(long, default_value_t = 0)]
    teacher_t: usize,
    /// The UNet's prediction type (default: v-prediction; a shapes model's own).
    #[arg(long, value_enum)]
    prediction: Option<Prediction>,
    #[command(flatten)]
    train: TrainArgs,
}

/// Where outputs go without `--out`.
const DEFAULT_OUT: &str = "out/train_sd21";

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.train.check(DEFAULT_OUT)?;
    if cli.train.backend == ctcal::launch::BackendKind::Ndarray {
        ctcal::heap::retain_freed_memory();
    }
    launch_autodiff(cli.train.backend, cli.train.checkpointing, Run(&cli))?
}

struct Run<'a>(&'a Cli);

impl OnAutodiffBackend for Run<'_> {
    type Output = Result<()>;
    fn run<B: AutodiffAttentionBackend>(self, device: &B::Device) -> Result<()> {
        run::<B>(self.0, device)
    }
}

fn run<B: AutodiffAttentionBackend>(cli: &Cli, device: &B::Device) -> Result<()> {
    let teacher = TeacherRule::FixedTimestep(cli.teacher_t);
    if is_shapes_model(&cli.pipeline) {
        if cli.prediction.is_some() || cli.model.is_some() {
            bail!(
                "--prediction and --model: {} is a shapes model, which trains whole on its own \
                 schedule (v-prediction)",
                cli.pipeline.display()
            );
        }
        let (dir, args) = (&cli.pipeline, &cli.train);
        return fit_shapes::<B, UNet2DConditionModel<B>>(
            dir,
            args,
            Some(teacher),
            DEFAULT_OUT,
            device,
        );
    }
    let pipe = StableDiffusion::<B::InnerBackend>::load(&cli.pipeline, None, device)?;
    let model_dir = cli
        .model
        .clone()
        .unwrap_or_else(|| cli.pipeline.join("unet"));
    let config = UNet2DConditionConfig::from_diffusers_json(&model_dir.join("config.json"))?;
    let resolution = (config.sample_size * pipe.vae.downscale) as u32;
    let (unet, report) = load_module(config.init::<B>(device), &model_dir, None)?;
    println!(
        "loaded {} tensors from {}",
        report.tensors,
        report.files.join(", ")
    );
    let prediction = cli.prediction.unwrap_or(Prediction::VPrediction);
    let schedule = Schedule::Ddpm(
        match prediction {
            Prediction::VPrediction => DdpmConfig::sd21(),
            Prediction::Epsilon => DdpmConfig::sd21_base(),
        }
        .init(),
    );
    let denoiser = DiffusersModel {
        model: unet,
        dir: &model_dir,
        folder: "unet",
        resolution,
    };
    let configs = (
        CtcalConfig::sd21().with_teacher(teacher),
        LoraConfig::unet_default(),
    );
    fit_pipeline(
        &cli.train,
        denoiser,
        &pipe,
        configs,
        &schedule,
        DEFAULT_OUT,
        device,
    )
}
