//! Fine-tunes an SD 3 MMDiT with CTCal: LoRA on the joint-attention projections of both streams
//! (or every weight with `--full`), the rectified-flow loss plus the CTCal loss on the
//! image-to-text block of the joint attention, the teacher at the smaller of two sigmas.
//!
//! With no arguments it fine-tunes the trained shapes MMDiT shipped in `weights/shapes-mmdit`
//! (pixel space, word-level text encoder; see `ctcal::shapes`) on the bundled shapes images
//! `weights/shapes-data` on the CPU. A diffusers SD 3 pipeline folder (`--pipeline`, e.g. the
//! tiny random one in `weights/tiny-sd3`) trains the same way:
//!
//! ```text
//! cargo run --release --example train_sd3
//! cargo run --release --example train_sd3 -- --pipeline weights/tiny-sd3
//! cargo run --release --example train_sd3 -- --model path/to/transformer \
//!     --data path/to/features --backend cuda --steps 2000 --batch-size 8 --out out/my_run
//! ```
//! Writes `checkpoints/`, `metrics.jsonl`, `pytorch_lora_weights.safetensors` (diffusers'
//! `pipe.load_lora_weights(out)` takes it; `transformer/` with `--full`) and the map
//! auto-encoder.

mod common;

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::module::AutodiffModule;
use clap::Parser;
use common::settings::TrainCli;
use common::train::{DiffusersModel, TrainArgs, fit_pipeline, fit_shapes};
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::calibration::{CtcalConfig, TeacherRule};
use ctcal::config::file_setting;
use ctcal::launch::{OnAutodiffBackend, launch_autodiff};
use ctcal::lora::LoraConfig;
use ctcal::mmdit::{SD3Transformer2DConfig, SD3Transformer2DModel};
use ctcal::nouns::NounTokens;
use ctcal::pipeline::shapes::is_shapes_model;
use ctcal::pipeline::{SD3WithTextEncoders, StableDiffusion3, with_text_encoder_targets};
use ctcal::schedule::{FlowConfig, Schedule};
use ctcal::text::ClipTextModelWithProjection;
use ctcal::weights::load_module;
use serde::{Deserialize, Serialize};

/// Fine-tune an SD 3 transformer with CTCal.
#[derive(Parser, Debug, Serialize, Deserialize)]
struct Cli {
    /// A diffusers SD 3 pipeline folder (its tokenizers, text encoders and VAE encode
    /// image-folder data and render validation images; its `transformer/` is trained) or a
    /// shapes MMDiT model folder (`base_config.json`, `base.safetensors`).
    ///
    /// A model id (`stabilityai/stable-diffusion-3-medium-diffusers`) is looked up in the Hugging Face cache
    /// (`HF_HUB_CACHE`, `HF_HOME`) at `--revision`; nothing is downloaded.
    #[arg(
        long,
        visible_alias = "pretrained-model-name-or-path",
        alias = "pretrained_model_name_or_path",
        default_value = "weights/shapes-mmdit"
    )]
    pipeline: String,
    /// Train this `transformer/` folder instead of the pipeline's.
    #[arg(long)]
    model: Option<PathBuf>,
    /// T5 tokens of each caption (diffusers' SD 3 training scripts default to 77).
    #[arg(long, default_value_t = 77)]
    max_sequence_length: usize,
    /// A fixed teacher sigma instead of one drawn from the training density below the
    /// student's.
    #[arg(long)]
    teacher_sigma: Option<f64>,
    /// The timestep shift of the flow schedule; by default the pipeline's
    /// `scheduler/scheduler_config.json` says (3.0 for SD 3 medium; a flag that contradicts it
    /// needs --override-scheduler).
    #[arg(long)]
    shift: Option<f64>,
    /// Let --shift train with another shift than the pipeline's scheduler file names.
    #[arg(long)]
    override_scheduler: bool,
    /// Give each noun only its CLIP tokens; by default a noun's map sums its tokens in both the
    /// CLIP and the T5 part of the joint text sequence (`[train.ctcal] noun_tokens`).
    #[arg(long)]
    clip_only_nouns: bool,
    #[command(flatten)]
    #[serde(flatten)]
    train: TrainArgs,
}

impl TrainCli for Cli {
    const OWN_TRAIN_FLAGS: &'static [(&'static str, &'static [&'static str])] = &[
        ("teacher_sigma", &["ctcal.teacher"]),
        ("clip_only_nouns", &["ctcal.noun_tokens"]),
    ];
    fn train_args(&self) -> &TrainArgs {
        &self.train
    }
    fn train_args_mut(&mut self) -> &mut TrainArgs {
        &mut self.train
    }
}

/// Where outputs go without `--out`.
const DEFAULT_OUT: &str = "out/train_sd3";

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
    let teacher = cli.teacher_sigma.map(TeacherRule::FixedSigma);
    let location = cli.train.locate(&cli.pipeline)?;
    let variant = cli.train.variant.as_deref();
    if is_shapes_model(&location.root) {
        if cli.shift.is_some() || cli.model.is_some() || cli.override_scheduler {
            bail!(
                "--shift, --override-scheduler and --model: {} is a shapes model, which trains whole on its own \
                 schedule (shift 1)",
                cli.pipeline
            );
        }
        let (dir, args) = (&location.root, &cli.train);
        return fit_shapes::<B, SD3Transformer2DModel<B>>(dir, args, teacher, DEFAULT_OUT, device);
    }
    let mut pipe =
        StableDiffusion3::<B::InnerBackend>::from_pretrained(&location, variant, device)?;
    pipe.max_sequence_length = cli.max_sequence_length;
    let model_dir = cli
        .model
        .clone()
        .unwrap_or_else(|| location.root.join("transformer"));
    let config = SD3Transformer2DConfig::from_diffusers_json(&model_dir.join("config.json"))?;
    let resolution = (config.sample_size * pipe.vae.downscale) as u32;
    let (model, report) = load_module(config.init::<B>(device), &model_dir, variant)
        .map_err(|e| location.explain(e))?;
    tracing::info!(
        "loaded {} tensors from {}",
        report.tensors,
        report.files.join(", ")
    );
    // The training schedule is the pipeline's scheduler file's, as in diffusers' scripts.
    let file = location.root.join("scheduler/scheduler_config.json");
    let mut flow = FlowConfig::from_sampler(&pipe.scheduler);
    flow.shift = file_setting(
        "shift",
        flow.shift,
        cli.shift,
        cli.override_scheduler,
        &file,
    )?;
    let forced = cli.shift.is_some() && cli.override_scheduler;
    let how = if forced { "--shift over " } else { "" };
    tracing::info!("schedule: {} ({how}{})", flow.summary(), file.display());
    let schedule = Schedule::Flow(flow.init());
    let mut ctcal = CtcalConfig::sd3();
    if let Some(rule) = teacher {
        ctcal = ctcal.with_teacher(rule);
    }
    if cli.clip_only_nouns {
        ctcal = ctcal.with_noun_tokens(NounTokens::Clip);
    }
    // What the run uses: the flags under the settings files' `[train.ctcal]`.
    let resolved = cli.train.config(ctcal.clone())?.ctcal.noun_tokens;
    let t5 = pipe.t5_word_tokens().map(|t| t.max_length);
    match (t5, resolved) {
        (Some(n), NounTokens::ClipAndT5) => {
            tracing::info!("noun tokens: CLIP (0..77) and T5 (77..{})", 77 + n)
        }
        (Some(_), NounTokens::Clip) => tracing::info!("noun tokens: CLIP only"),
        (None, _) => tracing::info!("noun tokens: CLIP (the pipeline has no T5)"),
    }
    let denoiser = DiffusersModel {
        model: (),
        dir: &model_dir,
        folder: "transformer",
        resolution,
        base_model: &cli.pipeline,
    };
    let lora = LoraConfig::mmdit_default();
    let (args, out) = (&cli.train, DEFAULT_OUT);
    if cli.train.train_text_encoder {
        tracing::info!(
            "training LoRA on both CLIP text encoders too (T5 frozen), at lr {:e}",
            cli.train.text_encoder_lr
        );
        let clip = |m: &ClipTextModelWithProjection<B::InnerBackend>| {
            ClipTextModelWithProjection::from_inner(m.clone())
        };
        let model = SD3WithTextEncoders {
            transformer: model,
            text_encoder: clip(&pipe.text_encoders.text_encoder),
            text_encoder_2: clip(&pipe.text_encoders.text_encoder_2),
        };
        let configs = (ctcal, with_text_encoder_targets(lora));
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
    fit_pipeline(
        args,
        denoiser.with_model(model),
        &pipe,
        (ctcal, lora),
        &schedule,
        out,
        device,
    )
}
