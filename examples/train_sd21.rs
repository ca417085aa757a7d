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
use burn::module::AutodiffModule;
use clap::{Parser, ValueEnum};
use common::settings::TrainCli;
use common::train::{DiffusersModel, TrainArgs, fit_pipeline, fit_shapes};
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::calibration::{CtcalConfig, TeacherRule};
use ctcal::config::file_setting;
use ctcal::launch::{OnAutodiffBackend, launch_autodiff};
use ctcal::lora::LoraConfig;
use ctcal::pipeline::shapes::is_shapes_model;
use ctcal::pipeline::{StableDiffusion, UNetWithTextEncoder, with_text_encoder_targets};
use ctcal::schedule::{DdpmConfig, PredictionType, Schedule};
use ctcal::text::ClipTextModel;
use ctcal::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use ctcal::weights::load_module;
use serde::{Deserialize, Serialize};

/// What the UNet predicts (the scheduler's `prediction_type`).
#[derive(Debug, Clone, Copy, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Prediction {
    /// Velocity (SD 2.1, 768 px).
    #[value(name = "v-prediction", alias = "v_prediction")]
    #[serde(rename = "v-prediction")]
    Velocity,
    /// Noise (SD 2.1-base, SD 1.x).
    Epsilon,
    /// The clean latent.
    Sample,
}

impl From<Prediction> for PredictionType {
    fn from(p: Prediction) -> Self {
        match p {
            Prediction::Velocity => PredictionType::VPrediction,
            Prediction::Epsilon => PredictionType::Epsilon,
            Prediction::Sample => PredictionType::Sample,
        }
    }
}

/// Fine-tune an SD 2.1 UNet with CTCal.
#[derive(Parser, Debug, Serialize, Deserialize)]
struct Cli {
    /// A diffusers SD 2.x pipeline folder (its tokenizer, text encoder and VAE encode
    /// image-folder data and render validation images; its `unet/` is trained) or a shapes
    /// UNet model folder (`base_config.json`, `base.safetensors`).
    ///
    /// A model id (`stabilityai/stable-diffusion-2-1`) is looked up in the Hugging Face cache
    /// (`HF_HUB_CACHE`, `HF_HOME`) at `--revision`; nothing is downloaded.
    #[arg(
        long,
        visible_alias = "pretrained-model-name-or-path",
        alias = "pretrained_model_name_or_path",
        default_value = "weights/shapes-unet"
    )]
    pipeline: String,
    /// Train this `unet/` folder instead of the pipeline's.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The teacher's timestep (the method's default is 0: the least noisy).
    #[arg(long, default_value_t = 0)]
    teacher_t: usize,
    /// The UNet's prediction type; by default the pipeline's
    /// `scheduler/scheduler_config.json` says (a flag that contradicts it needs
    /// --override-scheduler).
    #[arg(long, value_enum)]
    prediction: Option<Prediction>,
    /// Let --prediction train another target than the pipeline's scheduler file names.
    #[arg(long)]
    override_scheduler: bool,
    #[command(flatten)]
    #[serde(flatten)]
    train: TrainArgs,
}

impl TrainCli for Cli {
    const OWN_TRAIN_FLAGS: &'static [(&'static str, &'static [&'static str])] =
        &[("teacher_t", &["ctcal.teacher"])];
    fn train_args(&self) -> &TrainArgs {
        &self.train
    }
    fn train_args_mut(&mut self) -> &mut TrainArgs {
        &mut self.train
    }
}

/// Where outputs go without `--out`.
const DEFAULT_OUT: &str = "out/train_sd21";

fn main() -> Result<()> {
    common::log::init();
    let cli: Cli = common::settings::parse(DEFAULT_OUT)?;
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
    let location = cli.train.locate(&cli.pipeline)?;
    let variant = cli.train.variant.as_deref();
    if is_shapes_model(&location.root) {
        if cli.prediction.is_some() || cli.model.is_some() || cli.override_scheduler {
            bail!(
                "--prediction, --override-scheduler and --model: {} is a shapes model, which trains whole on its own \
                 schedule (v-prediction)",
                cli.pipeline
            );
        }
        let (dir, args) = (&location.root, &cli.train);
        return fit_shapes::<B, UNet2DConditionModel<B>>(
            dir,
            args,
            Some(teacher),
            DEFAULT_OUT,
            device,
        );
    }
    let pipe = StableDiffusion::<B::InnerBackend>::from_pretrained(&location, variant, device)?;
    let model_dir = cli
        .model
        .clone()
        .unwrap_or_else(|| location.root.join("unet"));
    let config = UNet2DConditionConfig::from_diffusers_json(&model_dir.join("config.json"))?;
    let resolution = (config.sample_size * pipe.vae.downscale) as u32;
    let (unet, report) = load_module(config.init::<B>(device), &model_dir, variant)
        .map_err(|e| location.explain(e))?;
    tracing::info!(
        "loaded {} tensors from {}",
        report.tensors,
        report.files.join(", ")
    );
    // The training schedule is the pipeline's scheduler file's, as in diffusers' scripts.
    let file = location.root.join("scheduler/scheduler_config.json");
    let mut ddpm = DdpmConfig::from_sampler(&pipe.scheduler);
    ddpm.prediction_type = file_setting(
        "prediction",
        ddpm.prediction_type,
        cli.prediction.map(PredictionType::from),
        cli.override_scheduler,
        &file,
    )?;
    let forced = cli.prediction.is_some() && cli.override_scheduler;
    let how = if forced { "--prediction over " } else { "" };
    tracing::info!("schedule: {} ({how}{})", ddpm.summary(), file.display());
    let schedule = Schedule::Ddpm(ddpm.init());
    let denoiser = DiffusersModel {
        model: (),
        dir: &model_dir,
        folder: "unet",
        resolution,
        base_model: &cli.pipeline,
    };
    let ctcal = CtcalConfig::sd21().with_teacher(teacher);
    let lora = LoraConfig::unet_default();
    if cli.train.train_text_encoder {
        tracing::info!(
            "training LoRA on the text encoder too, at lr {:e}",
            cli.train.text_encoder_lr
        );
        let model = UNetWithTextEncoder {
            unet,
            text_encoder: ClipTextModel::from_inner(pipe.text_encoder.clone()),
        };
        let configs = (ctcal, with_text_encoder_targets(lora));
        let (args, out) = (&cli.train, DEFAULT_OUT);
        return fit_pipeline(
            args,
            denoiser.with_model(model),
            &pipe,
            configs,
            &schedule,
            out,
            device,
        );
    }
    let (args, out) = (&cli.train, DEFAULT_OUT);
    fit_pipeline(
        args,
        denoiser.with_model(unet),
        &pipe,
        (ctcal, lora),
        &schedule,
        out,
        device,
    )
}
