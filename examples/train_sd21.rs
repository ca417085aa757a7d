//! Fine-tunes an SD 2.1 UNet with CTCal: LoRA on the attention projections (or every weight
//! with `--full`), the diffusion loss plus the CTCal loss with teacher maps at a small timestep.
//!
//! With no arguments it trains the tiny UNet shipped in `weights/tiny-sd21` on the tiny
//! bundled dataset `weights/tiny-data` on the CPU, in about a minute:
//!
//! ```text
//! cargo run --release --example train_sd21
//! cargo run --release --example train_sd21 -- --model path/to/unet --data path/to/features \
//!     --backend cuda --steps 2000 --batch-size 8 --lr 1e-4 --rank 4 --out out/my_run
//! cargo run --release --example train_sd21 -- --out out/my_run --resume   # after a crash
//! ```
//! Writes `checkpoints/`, `metrics.jsonl`, `pytorch_lora_weights.safetensors` (diffusers'
//! `pipe.load_lora_weights(out)` takes it; `unet/` with `--full`) and the map auto-encoder.

#[macro_use]
mod common;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use common::train::{ModelInfo, TrainArgs, fit};
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::ctcal::{CtcalConfig, Schedule, TeacherRule};
use ctcal::lora::LoraConfig;
use ctcal::pipeline::StableDiffusion;
use ctcal::schedule::DdpmConfig;
use ctcal::unet::UNet2DConditionConfig;
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
    /// A diffusers SD 2.x pipeline folder: its tokenizer, text encoder and VAE encode
    /// image-folder data and render validation images; its `unet/` is trained.
    #[arg(long, default_value = "weights/tiny-sd21")]
    pipeline: PathBuf,
    /// Train this `unet/` folder instead of the pipeline's.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The teacher's timestep (the method's default is 0: the least noisy).
    #[arg(long, default_value_t = 0)]
    teacher_t: usize,
    /// The UNet's prediction type.
    #[arg(long, value_enum, default_value = "v-prediction")]
    prediction: Prediction,
    #[command(flatten)]
    train: TrainArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    dispatch!(
        cli.train.backend,
        run,
        &cli,
        autodiff(cli.train.checkpointing)
    )
}

fn run<B: AutodiffAttentionBackend>(cli: &Cli, device: &B::Device) -> Result<()> {
    cli.train.check()?;
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
    let schedule = Schedule::Ddpm(
        match cli.prediction {
            Prediction::VPrediction => DdpmConfig::sd21(),
            Prediction::Epsilon => DdpmConfig::sd21_base(),
        }
        .init(),
    );
    let ctcal = CtcalConfig::sd21().with_teacher(TeacherRule::FixedTimestep(cli.teacher_t));
    let info = ModelInfo {
        model_dir: &model_dir,
        folder: "unet",
        default_out: "out/train_sd21",
    };
    let config = cli.train.config(ctcal);
    fit(
        unet,
        info,
        &cli.train,
        LoraConfig::unet_default(),
        config,
        &schedule,
        &pipe,
        resolution,
        device,
    )
}
