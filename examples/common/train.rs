//! What both training examples share: their flags, the [`Trainer`] they configure, and the
//! terminal side of a run (a progress bar and messages drawn from the trainer's events).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::calibration::CtcalConfig;
use ctcal::data::{BadRowPolicy, Dataset, TrainingData};
use ctcal::hub::ModelLocation;
use ctcal::launch::BackendKind;
use ctcal::lora::LoraConfig;
use ctcal::pipeline::shapes::{ShapesDenoiserPart, ShapesPipeline, load_shapes_pipeline};
use ctcal::precision::MixedPrecision;
use ctcal::schedule::Schedule;
use ctcal::train::{
    DataParallel, Event, Fitted, Layers, LrSchedule, Output, TrainConfig, TrainInputs, Trainable,
    Trainer, Validation, check_output_dir, parse_devices, serve_orchestrator,
};
use ctcal::weights::save_diffusers;
use indicatif::ProgressBar;
use tracing::{info, warn};

use super::log::progress_bar;
use serde::{Deserialize, Serialize};

/// The bundled shapes data, the default `--data`.
const SHAPES_DATA: &str = "weights/shapes-data";

/// Compute type of the forward and backward passes (weights and optimiser state stay f32).
#[derive(Debug, Clone, Copy, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    No,
    /// bf16 compute, f32 master weights.
    Bf16,
    /// f16 compute, f32 master weights (no loss scaling).
    Fp16,
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedules {
    /// Constant.
    Constant,
    /// Half-cosine to zero.
    Cosine,
}

/// Where to log besides `metrics.jsonl` (diffusers' `--report_to`).
#[derive(Debug, Clone, Copy, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportTo {
    /// TensorBoard event files in `<out>/logs/`.
    Tensorboard,
}

/// A published training recipe.
#[derive(Debug, Clone, Copy, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// The CTCal paper's (`TrainConfig::paper_recipe`): LoRA rank 4, AdamW 1e-4, weight decay
    /// 1e-2, 500 warm-up steps then constant, gradient norm 1.0, batch 16, 15,000 steps.
    Gors,
}

/// Arguments shared by the training examples; in a settings file, the top-level keys (the
/// training settings among them under `[train]`, see `settings`).
#[derive(Args, Debug, Serialize, Deserialize)]
pub struct TrainArgs {
    /// A TOML settings file: the top-level keys are the flags without dashes (`data`,
    /// `rank`, ...), the whole training config is its `[train]` table (`steps`, `lr`,
    /// `weight_decay`, `[train.ctcal]` `tau`, ...); flags given override it. Every run writes
    /// its resolved settings to `<out>/config.toml` (and each checkpoint), which `--config`
    /// takes to start a run alike and `--resume` reads by itself.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Training data: a folder with `metadata.jsonl` (`file_name`, `text`, optional `nouns`)
    /// over images, encoded on the fly by the pipeline's frozen VAE and text encoders, or over
    /// cached features (`.safetensors` with `latents`, `encoder_hidden_states`, optional
    /// `pooled_projections`), e.g. `weights/tiny-data`.
    /// Default: the bundled shapes set `weights/shapes-data` (in the repository, not the
    /// crates.io package), which a diffusers pipeline trains on only with a notice.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Image side for image folders (resized and centre-cropped); default: the denoiser's
    /// native resolution.
    #[arg(long)]
    pub resolution: Option<u32>,
    /// Use the VAE posterior mean instead of a sample (image folders).
    #[arg(long)]
    pub latent_mean: bool,
    /// Render validation images every N steps (and at the start and the end); 0: never.
    #[arg(long, default_value_t = 10)]
    pub validate_every: usize,
    /// A validation prompt (repeat for several); default: the first captions of the data.
    #[arg(long, alias = "validation_prompt")]
    pub validation_prompt: Vec<String>,
    /// Denoising steps of the validation images.
    #[arg(long, default_value_t = 20)]
    pub validation_steps: usize,
    /// The hub revision (branch, tag or commit) of a pipeline given by model id.
    #[arg(long)]
    pub revision: Option<String>,
    /// Weight files variant (`fp16`: `*.fp16.safetensors`); by default the plain files, else
    /// the `fp16` ones when only they are there.
    #[arg(long)]
    pub variant: Option<String>,
    /// Backend to train on: ndarray, wgpu, cuda or tch (each needs its cargo feature); by
    /// default the build's GPU backend if it has one, else ndarray.
    #[arg(long, default_value_t = BackendKind::default())]
    pub backend: BackendKind,
    /// Mixed precision (diffusers' `--mixed_precision`): bf16 or fp16 forward and backward,
    /// f32 weights and AdamW state. GPU backends only.
    #[arg(long, alias = "mixed_precision", value_enum, default_value = "no")]
    pub mixed_precision: Precision,
    /// Gradient checkpointing (burn's `BalancedCheckpointing`): recompute cheap activations
    /// in the backward pass instead of keeping them; same gradients, less memory.
    #[arg(
        long,
        visible_alias = "gradient-checkpointing",
        alias = "gradient_checkpointing"
    )]
    pub checkpointing: bool,
    /// Train with a published recipe's settings (its flags cannot be given beside it).
    #[arg(long, value_enum, conflicts_with_all = ["steps", "batch_size", "lr", "text_encoder_lr", "warmup_steps", "lr_schedule", "rank"])]
    pub recipe: Option<Recipe>,
    /// Optimiser steps.
    #[arg(
        long,
        visible_alias = "max-train-steps",
        alias = "max_train_steps",
        default_value_t = 30
    )]
    pub steps: usize,
    /// Samples per step (per micro-batch with --grad-accum).
    #[arg(
        long,
        visible_alias = "train-batch-size",
        alias = "train_batch_size",
        default_value_t = 2
    )]
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    #[arg(
        long,
        visible_alias = "gradient-accumulation-steps",
        alias = "gradient_accumulation_steps",
        default_value_t = 1
    )]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(
        long,
        visible_alias = "learning-rate",
        alias = "learning_rate",
        default_value_t = 1e-4
    )]
    pub lr: f64,
    /// Train LoRA on the CLIP text encoders' self-attention too (SD 3: both CLIPs; T5 stays
    /// frozen), at --text-encoder-lr; captions are then encoded in every step (image data
    /// only). One export holds every adapter.
    #[arg(long, alias = "train_text_encoder")]
    pub train_text_encoder: bool,
    /// Peak learning rate of the text encoders' LoRA (with --train-text-encoder).
    #[arg(long, alias = "text_encoder_lr", default_value_t = 5e-6)]
    pub text_encoder_lr: f64,
    /// Linear warm-up steps.
    #[arg(
        long,
        visible_alias = "lr-warmup-steps",
        alias = "lr_warmup_steps",
        default_value_t = 0
    )]
    pub warmup_steps: usize,
    /// Schedule after warm-up.
    #[arg(
        long,
        visible_alias = "lr-scheduler",
        alias = "lr_scheduler",
        value_enum,
        default_value = "constant"
    )]
    pub lr_schedule: Schedules,
    /// LoRA rank (ignored with --full).
    #[arg(long, default_value_t = 4)]
    pub rank: usize,
    /// Train every weight instead of LoRA adapters.
    #[arg(long)]
    pub full: bool,
    /// Weight of the CTCal loss (`lambda_ctcal`); 0 trains with the diffusion loss alone.
    #[arg(long, default_value_t = 1.0)]
    pub ctcal_weight: f64,
    /// The attention layers whose maps CTCal compares, by diffusers path, comma-separated
    /// (`transformer_blocks.3.attn` for an MMDiT block,
    /// `up_blocks.1.attentions.0.transformer_blocks.0.attn2` for a UNet layer); default: the
    /// model's preset (`[train.ctcal] layer_paths`).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub map_layers: Vec<String>,
    /// Keep an EMA of the trained weights with this decay (exported instead of the raw ones).
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Seed of data order, noise, timesteps and adapter initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N steps (and at the end).
    #[arg(
        long,
        visible_alias = "checkpointing-steps",
        alias = "checkpointing_steps",
        default_value_t = 10
    )]
    pub checkpoint_every: usize,
    /// Checkpoints kept (older ones are removed); 0 keeps all.
    #[arg(long, alias = "checkpoints_total_limit", default_value_t = 3)]
    pub checkpoints_total_limit: usize,
    /// Output folder: checkpoints, metrics.jsonl, the exported weights.
    #[arg(long, visible_alias = "output-dir", alias = "output_dir")]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint (also to more --steps), with the
    /// settings it saved (flags given override them).
    #[arg(long, conflicts_with = "overwrite")]
    #[serde(skip)]
    pub resume: bool,
    /// diffusers' spelling of --resume: `latest` is the only value (the run continues from
    /// `<out>/checkpoints/latest`).
    #[arg(long, alias = "resume_from_checkpoint", value_parser = ["latest"], conflicts_with = "overwrite")]
    #[serde(skip)]
    pub resume_from_checkpoint: Option<String>,
    /// Clear --out before training; without it a fresh run into a folder with files is refused.
    #[arg(long)]
    #[serde(skip)]
    pub overwrite: bool,
    /// Also log to TensorBoard: each step's losses, learning rate, gradient norm and step time,
    /// the validation images and noun-map previews, in `<out>/logs/`
    /// (`tensorboard --logdir <out>/logs`).
    #[arg(long, alias = "report_to", value_enum)]
    pub report_to: Option<ReportTo>,
    /// Train data-parallel on these devices of this machine, one peer thread each
    /// (`cuda:0,cuda:1`; `cpu,cpu` on ndarray): every device takes --batch-size samples of
    /// each step, so a step trains on devices x nodes x batch-size samples.
    #[arg(long, conflicts_with = "num_devices")]
    #[serde(skip)]
    pub devices: Option<String>,
    /// Train data-parallel on the backend's first N devices (see --devices).
    #[arg(long, alias = "num_processes")]
    #[serde(skip)]
    pub num_devices: Option<usize>,
    /// Machines of a multi-machine run (accelerate's --num_machines); each runs this command
    /// with its --node-rank.
    #[arg(long, alias = "num_machines", default_value_t = 1)]
    #[serde(skip)]
    pub num_nodes: usize,
    /// This machine's rank, 0..--num-nodes (accelerate's --machine_rank); node 0 serves the
    /// orchestrator and writes the outputs.
    #[arg(long, alias = "machine_rank", default_value_t = 0)]
    #[serde(skip)]
    pub node_rank: usize,
    /// HOST:PORT of the collective orchestrator, the same on every machine (node 0 serves it
    /// on PORT).
    #[arg(long)]
    #[serde(skip)]
    pub orchestrator: Option<String>,
    /// HOST:PORT at which the other machines reach this one (its tensor data service).
    #[arg(long)]
    #[serde(skip)]
    pub node_address: Option<String>,
    /// Stop at the first bad metadata row or unreadable sample instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// The settings files under the flags (filled by `settings::parse`).
    #[arg(skip)]
    #[serde(skip)]
    pub layers: Layers,
    /// The run's own settings for its `config.toml` (filled by `settings::parse`).
    #[arg(skip)]
    #[serde(skip)]
    pub run_keys: toml::Table,
}

impl TrainArgs {
    /// Refuses settings the chosen backend cannot run, before anything is loaded or written.
    pub fn check(&self, default_out: &str) -> Result<()> {
        // The numbers (every CtcalConfig preset passes its own checks) and the output folder.
        let config = self.config(CtcalConfig::new())?;
        config.validate().context(
            "checking the training settings (--steps, --batch-size, --lr, [train], ...)",
        )?;
        self.parallel().validate()?;
        if self.train_text_encoder && self.full {
            bail!(
                "--train-text-encoder adds LoRA on the text encoders to a LoRA run; --full \
                 fine-tunes every denoiser weight instead and exports no text encoder: give \
                 one of the two"
            );
        }
        if self.node_rank == 0 {
            check_output_dir(&self.out(default_out), self.resuming(), self.overwrite)?;
        }
        let precision = config.mixed_precision;
        if precision != MixedPrecision::No && self.backend == BackendKind::Ndarray {
            bail!(
                "mixed precision {precision:?} (--mixed-precision) needs --backend cuda (or \
                 wgpu): ndarray has no bf16/f16"
            );
        }
        Ok(())
    }

    /// The run's settings with `ctcal` as the CTCal loss: the flags (and their defaults) with
    /// the settings files' `[train]` tables over them, and the flags given over those.
    pub fn config(&self, ctcal: CtcalConfig) -> Result<TrainConfig> {
        Ok(self.layers.train_config(self.flag_config(ctcal))?)
    }

    /// The run's settings as the flags alone say.
    fn flag_config(&self, ctcal: CtcalConfig) -> TrainConfig {
        let mut ctcal = ctcal.with_lambda_ctcal(self.ctcal_weight);
        if !self.map_layers.is_empty() {
            ctcal = ctcal.with_layer_paths(self.map_layers.clone());
        }
        match self.recipe {
            Some(Recipe::Gors) => TrainConfig::paper_recipe(ctcal),
            None => TrainConfig::new(ctcal)
                .with_steps(self.steps)
                .with_batch_size(self.batch_size)
                .with_lr(self.lr)
                .with_text_encoder_lr(self.text_encoder_lr)
                .with_warmup_steps(self.warmup_steps)
                .with_lr_schedule(match self.lr_schedule {
                    Schedules::Constant => LrSchedule::Constant,
                    Schedules::Cosine => LrSchedule::Cosine,
                }),
        }
        .with_grad_accum(self.grad_accum)
        .with_ema_decay(self.ema_decay)
        .with_seed(self.seed)
        .with_checkpoint_every(self.checkpoint_every)
        .with_checkpoints_total_limit(self.checkpoints_total_limit)
        .with_sample_posterior(!self.latent_mean)
        .with_mixed_precision(match self.mixed_precision {
            Precision::No => MixedPrecision::No,
            Precision::Bf16 => MixedPrecision::Bf16,
            Precision::Fp16 => MixedPrecision::Fp16,
        })
    }

    /// Where the pipeline named by `name_or_path` (a folder, or a model id in the Hugging Face
    /// cache at `--revision`) is on disk.
    pub fn locate(&self, name_or_path: &str) -> Result<ModelLocation> {
        let location = ModelLocation::resolve(
            name_or_path,
            self.revision.as_deref(),
            None,
            "model_index.json",
        )?;
        if let Some(hub) = &location.hub {
            info!(
                "{} at {} (commit {}): {}",
                hub.repo_id,
                hub.revision,
                hub.commit,
                location.root.display()
            );
        }
        Ok(location)
    }

    /// The machines of the run (--num-nodes, --node-rank, --orchestrator, --node-address).
    pub fn parallel(&self) -> DataParallel {
        DataParallel {
            num_nodes: self.num_nodes,
            node_rank: self.node_rank,
            orchestrator: self.orchestrator.clone(),
            node_address: self.node_address.clone(),
        }
    }

    /// Whether to continue from the latest checkpoint (--resume or
    /// --resume-from-checkpoint latest).
    pub fn resuming(&self) -> bool {
        self.resume || self.resume_from_checkpoint.is_some()
    }

    /// The output folder (`default` without `--out`).
    pub fn out(&self, default: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from(default))
    }

    /// Opens `--data` (images of `--resolution`, else `resolution`, or cached features); the
    /// rows it skips are printed when the trainer reports them; fewer usable samples than a
    /// batch is an error.
    pub fn open_data(&self, resolution: u32, batch_size: usize) -> Result<TrainingData> {
        let dir = self.data.as_deref().unwrap_or(Path::new(SHAPES_DATA));
        let meta = dir.join("metadata.jsonl");
        let policy = match self.strict {
            true => BadRowPolicy::Fail,
            false => BadRowPolicy::Skip,
        };
        let side = self.resolution.unwrap_or(resolution);
        let data = TrainingData::open(&meta, side, policy)
            .with_context(|| format!("opening the training data {}", meta.display()))?;
        if data.len() < batch_size {
            bail!(
                "{} has {} usable samples, fewer than the batch size {} ({})",
                meta.display(),
                data.len(),
                batch_size,
                data.skipped()
            );
        }
        match &data {
            TrainingData::Images(_) => info!(
                "training on {} images of {side}x{side} from {}",
                data.len(),
                meta.display()
            ),
            TrainingData::Cached(_) => info!(
                "training on {} cached samples from {}",
                data.len(),
                meta.display()
            ),
        }
        Ok(data)
    }

    /// A trainer for these flags: `lora` adapters of `--rank` unless `--full`, validation
    /// images, a model card naming `base_model` (a diffusers pipeline), a progress bar and
    /// messages on `bar`.
    pub fn trainer<'a>(
        &self,
        config: TrainConfig,
        lora: LoraConfig,
        out: &Path,
        base_model: Option<&str>,
        bar: &'a ProgressBar,
    ) -> Trainer<'a> {
        let mut trainer = Trainer::new(config)
            .settings(self.run_keys.clone())
            .tensorboard(matches!(self.report_to, Some(ReportTo::Tensorboard)))
            .output_dir(out)
            .resume(self.resuming())
            .overwrite(self.overwrite)
            .data_parallel(self.parallel())
            .validation(Validation {
                prompts: self.validation_prompt.clone(),
                every: self.validate_every,
                steps: self.validation_steps,
            })
            .listen(move |event| report(bar, event));
        if !self.full {
            trainer = trainer.lora(lora.with_rank(self.rank));
        }
        if let Some(base_model) = base_model {
            trainer = trainer.model_card(base_model);
        }
        trainer
    }
}

/// The terminal side of a run's events.
fn report(bar: &ProgressBar, event: &Event<'_>) {
    match event {
        Event::Prepared {
            lora,
            trainable,
            total,
        } => {
            if let Some(lora) = lora {
                info!(
                    "LoRA on {} projections: {} trainable parameters, {} frozen",
                    lora.adapters(),
                    lora.trainable_params,
                    lora.frozen_params
                );
            }
            info!("training {trainable} of {total} parameters");
        }
        Event::Skipped(rows) => warn!("{rows}"),
        Event::Started { start, steps, .. } => {
            bar.set_length(*steps as u64);
            bar.set_position(*start as u64);
        }
        Event::Step(log) => {
            bar.set_position(log.step as u64);
            bar.set_message(format!(
                "loss {:.4} (diffusion {:.4}, ctcal {:.4}) lr {:.1e}",
                log.loss.total, log.loss.diffusion, log.loss.ctcal, log.lr
            ));
            if let Some(skipped) = &log.skipped {
                warn!("step {}: {skipped}", log.step);
            }
        }
        Event::Wrote { output, path, step } => {
            let what = match output {
                Output::Checkpoint => "checkpoint",
                Output::Validation => "validation images",
                Output::MapPreview => "teacher | student maps per noun",
                Output::LossPlot => "loss curves",
                Output::LoraWeights => {
                    "LoRA weights (PEFT keys; diffusers' pipe.load_lora_weights(<out>) reads them)"
                }
                Output::AutoEncoder => "map auto-encoder",
                Output::ModelCard => "model card",
                Output::Settings => "resolved settings (--config takes them, --resume reads them)",
                Output::TensorBoard => "TensorBoard events (tensorboard --logdir <out>/logs)",
            };
            info!("step {step}: {what}: {}", path.display());
        }
    }
}

/// Runs `trainer` on `device`, or data-parallel on the devices and machines `args` name, and
/// prints the loss summary.
fn fit<B, M, I>(
    (args, trainer): (&TrainArgs, Trainer<'_>),
    model: M,
    inputs: &I,
    data: TrainingData,
    schedule: &Schedule,
    device: &B::Device,
) -> Result<Fitted<M, B>>
where
    B: AutodiffAttentionBackend,
    M: Trainable<B>,
    I: TrainInputs<B, M> + Sync,
{
    let parallel = args.parallel();
    let devices: Vec<B::Device> = match (&args.devices, args.num_devices) {
        (None, None) => vec![device.clone()],
        (list, n) => parse_devices(list.as_deref(), n)?,
    };
    let data = Arc::new(data);
    let fitted = if devices.len() == 1 && parallel.nodes() == 1 {
        trainer.fit(model, inputs, data, schedule, device)?
    } else {
        info!(
            "data-parallel: {} device(s) here, {} machine(s), {} samples a step",
            devices.len(),
            parallel.nodes(),
            devices.len()
                * parallel.nodes()
                * trainer.config().batch_size
                * trainer.config().grad_accum
        );
        if let Some(port) = parallel.orchestrator_port()? {
            serve_orchestrator(port)?;
        }
        trainer.fit_parallel(model, &[inputs], &devices, data, schedule)?
    };
    if let (Some(first), Some(last)) = (fitted.logs.first(), fitted.logs.last()) {
        info!(
            "steps {}..{}: loss {:.4} -> {:.4} (diffusion {:.4} -> {:.4}, ctcal {:.4} -> {:.4})",
            fitted.start_step + 1,
            last.step,
            first.loss.total,
            last.loss.total,
            first.loss.diffusion,
            last.loss.diffusion,
            first.loss.ctcal,
            last.loss.ctcal,
        );
    }
    Ok(fitted)
}

/// A diffusers denoiser to fine-tune: the model and where it came from.
pub struct DiffusersModel<'a, M> {
    /// The loaded denoiser.
    pub model: M,
    /// Its folder (its `config.json` is written back with a `--full` fine-tune).
    pub dir: &'a Path,
    /// Its folder name in a pipeline (`unet`, `transformer`), for the `--full` export.
    pub folder: &'a str,
    /// The image side it was trained at (its `sample_size` times the VAE's factor).
    pub resolution: u32,
    /// The pipeline as the user named it (a hub id or a folder), for the model card.
    pub base_model: &'a str,
}

impl<'a, M> DiffusersModel<'a, M> {
    /// The same denoiser's description around `model` (built from it: the denoiser with its
    /// text encoders).
    pub fn with_model<N>(self, model: N) -> DiffusersModel<'a, N> {
        DiffusersModel {
            model,
            dir: self.dir,
            folder: self.folder,
            resolution: self.resolution,
            base_model: self.base_model,
        }
    }
}

/// Fine-tunes a diffusers denoiser with the frozen rest of its pipeline `pipe` as `args` say
/// (`lora` adapters of `--rank` unless `--full`, which writes the model in diffusers layout).
pub fn fit_pipeline<B, M, P>(
    args: &TrainArgs,
    denoiser: DiffusersModel<'_, M>,
    pipe: &P,
    (ctcal, lora): (CtcalConfig, LoraConfig),
    schedule: &Schedule,
    default_out: &str,
    device: &B::Device,
) -> Result<()>
where
    B: AutodiffAttentionBackend,
    M: Trainable<B>,
    P: TrainInputs<B, M> + Sync,
{
    if args.data.is_none() {
        info!(
            "no --data: training on the bundled toy set {SHAPES_DATA} (32x32 pictures of \
             coloured shapes); give --data for your own images or cached features"
        );
    }
    let config = args.config(ctcal)?;
    let data = args.open_data(denoiser.resolution, config.batch_size)?;
    let out = args.out(default_out);
    let bar = progress_bar();
    let base = Some(denoiser.base_model);
    let trainer = args.trainer(config, lora, &out, base, &bar);
    let fitted = fit(
        (args, trainer),
        denoiser.model,
        pipe,
        data,
        schedule,
        device,
    )?;
    bar.finish();
    if args.full {
        let dir = out.join(denoiser.folder);
        let config = denoiser.dir.join("config.json");
        let n = save_diffusers(&fitted.final_model().valid(), &config, &dir, |_| false)?;
        info!("{n} tensors in diffusers layout: {}", dir.display());
    }
    Ok(())
}

/// Fine-tunes the `D` (UNet or MMDiT) of the shapes model in `dir` with its architecture's
/// schedule, CTCal config (`teacher` overrides its teacher rule) and LoRA targets; `--full`
/// writes a shapes model folder (`model/`).
pub fn fit_shapes<B, D>(
    dir: &Path,
    args: &TrainArgs,
    teacher: Option<ctcal::calibration::TeacherRule>,
    default_out: &str,
    device: &B::Device,
) -> Result<()>
where
    B: AutodiffAttentionBackend,
    D: ShapesDenoiserPart<B> + Trainable<B>,
    D::InnerModule: ShapesDenoiserPart<B::InnerBackend>,
    ShapesPipeline<B::InnerBackend, D::InnerModule>: TrainInputs<B, D> + Sync,
{
    if args.train_text_encoder {
        bail!(
            "--train-text-encoder: {} is a shapes model, whose word-level text encoder has no \
             attention to adapt; it needs a diffusers pipeline (CLIP)",
            dir.display()
        );
    }
    let (pipe, model) = load_shapes_pipeline::<B, D>(dir, device)
        .with_context(|| format!("loading the shapes model {}", dir.display()))?;
    let arch = pipe.arch;
    info!(
        "shapes {arch} model from {} (pixel space, {}x{}, word-level text encoder)",
        dir.display(),
        pipe.size,
        pipe.size
    );
    let mut ctcal = arch.ctcal();
    if let Some(rule) = teacher {
        ctcal = ctcal.with_teacher(rule);
    }
    let config = args.config(ctcal)?;
    let data = args.open_data(pipe.size as u32, config.batch_size)?;
    let out = args.out(default_out);
    let bar = progress_bar();
    // No model card: a shapes model is not a diffusers pipeline.
    let trainer = args.trainer(config, arch.lora(args.rank), &out, None, &bar);
    let fitted = fit(
        (args, trainer),
        model,
        &pipe,
        data,
        &arch.schedule(),
        device,
    )?;
    bar.finish();
    if args.full {
        let dir = out.join("model");
        let model = fitted.final_model().valid();
        pipe.model(model).save_dir(&pipe.config, &dir)?;
        info!("shapes model folder: {}", dir.display());
    }
    Ok(())
}
