//! The training driver both `train_sd21` and `train_sd3` use: arguments, LoRA or full
//! fine-tuning, the loop with a progress bar, and the exports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, ValueEnum};
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::ctcal::{CtcalConfig, Denoiser, Schedule, TeacherRule};
use ctcal::data::{BadRowPolicy, BadRows, CachedFeatures, Dataset, ImageFolder};
use ctcal::lora::{LoraConfig, LoraTarget, apply_lora, export_peft};
use ctcal::pipeline::{GenerateConfig, ImageInputs, TrainingPipeline};
use ctcal::precision::MixedPrecision;
use ctcal::shapes::{ShapesDenoiserPart, load_shapes_pipeline};
use ctcal::train::{
    BatchInputs, CachedInputs, LrSchedule, RunDirs, StepLog, TrainConfig, Trained, count_params,
    loss_plot, map_preview, preview_levels, save_params, train,
};
use ctcal::vae::tensor_to_images;
use ctcal::viz::save_png;
use ctcal::weights::save_diffusers;
use indicatif::{ProgressBar, ProgressStyle};

use super::BackendKind;

/// Compute type of the forward and backward passes (weights and optimiser state stay f32).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Precision {
    /// f32 throughout.
    No,
    /// bf16 compute, f32 master weights.
    Bf16,
    /// f16 compute, f32 master weights (no loss scaling).
    Fp16,
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Schedules {
    /// Constant.
    Constant,
    /// Half-cosine to zero.
    Cosine,
}

/// Arguments shared by the training examples.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training data: a folder with `metadata.jsonl` (`file_name`, `text`, optional `nouns`)
    /// over images, encoded on the fly by the pipeline's frozen VAE and text encoders, or over
    /// cached features (`.safetensors` with `latents`, `encoder_hidden_states`, optional
    /// `pooled_projections`), e.g. `weights/tiny-data/features`.
    #[arg(long, default_value = "weights/shapes-data")]
    pub data: PathBuf,
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
    #[arg(long)]
    pub validation_prompt: Vec<String>,
    /// Denoising steps of the validation images.
    #[arg(long, default_value_t = 20)]
    pub validation_steps: usize,
    /// Backend to train on.
    #[arg(long, value_enum, default_value = "ndarray")]
    pub backend: BackendKind,
    /// Mixed precision (diffusers' `--mixed_precision`): bf16 or fp16 forward and backward,
    /// f32 weights and AdamW state. GPU backends only.
    #[arg(long, value_enum, default_value = "no")]
    pub mixed_precision: Precision,
    /// Gradient checkpointing (burn's `BalancedCheckpointing`): recompute cheap activations
    /// in the backward pass instead of keeping them; same gradients, less memory.
    #[arg(long)]
    pub checkpointing: bool,
    /// Optimiser steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Samples per step (per micro-batch with --grad-accum).
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Schedule after warm-up.
    #[arg(long, value_enum, default_value = "constant")]
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
    /// Keep an EMA of the trained weights with this decay (exported instead of the raw ones).
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Seed of data order, noise, timesteps and adapter initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 10)]
    pub checkpoint_every: usize,
    /// Output folder: checkpoints, metrics.jsonl, the exported weights.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Stop at the first bad metadata row or unreadable sample instead of skipping it.
    #[arg(long)]
    pub strict: bool,
}

impl TrainArgs {
    /// Refuses settings the chosen backend cannot run, before anything is loaded or written.
    pub fn check(&self) -> anyhow::Result<()> {
        if !matches!(self.mixed_precision, Precision::No)
            && matches!(self.backend, BackendKind::Ndarray)
        {
            anyhow::bail!(
                "--mixed-precision {:?} needs --backend cuda (or wgpu): ndarray has no bf16/f16",
                self.mixed_precision
            );
        }
        Ok(())
    }

    /// The run's settings with `ctcal` as the CTCal loss.
    pub fn config(&self, ctcal: CtcalConfig) -> TrainConfig {
        TrainConfig::new(ctcal.with_lambda_ctcal(self.ctcal_weight))
            .with_steps(self.steps)
            .with_batch_size(self.batch_size)
            .with_grad_accum(self.grad_accum)
            .with_lr(self.lr)
            .with_warmup_steps(self.warmup_steps)
            .with_lr_schedule(match self.lr_schedule {
                Schedules::Constant => LrSchedule::Constant,
                Schedules::Cosine => LrSchedule::Cosine,
            })
            .with_ema_decay(self.ema_decay)
            .with_seed(self.seed)
            .with_checkpoint_every(self.checkpoint_every)
            .with_mixed_precision(match self.mixed_precision {
                Precision::No => MixedPrecision::No,
                Precision::Bf16 => MixedPrecision::Bf16,
                Precision::Fp16 => MixedPrecision::Fp16,
            })
    }
}

/// What the example knows about its model.
pub struct ModelInfo<'a, M> {
    /// Default output folder.
    pub default_out: &'a str,
    /// Writes a fully fine-tuned model (`--full`) into the output folder in the layout its
    /// base came in; returns what it wrote, for the summary.
    pub save_full: SaveFull<'a, M>,
}

/// See [`ModelInfo::save_full`].
pub type SaveFull<'a, M> = Box<dyn Fn(&M, &Path) -> Result<String> + 'a>;

/// [`ModelInfo::save_full`] for a diffusers model folder: `folder/` (`unet` or
/// `transformer`) with the weights and the base's `config.json`.
pub fn save_diffusers_folder<'a, B, M>(model_dir: &'a Path, folder: &'a str) -> SaveFull<'a, M>
where
    B: burn::tensor::backend::Backend,
    M: burn::module::Module<B>,
{
    Box::new(move |model: &M, out: &Path| {
        let dir = out.join(folder);
        let n = save_diffusers(model, &model_dir.join("config.json"), &dir, |_| false)?;
        Ok(format!(
            "{n} tensors in diffusers layout: {}",
            dir.display()
        ))
    })
}

/// Fine-tunes the `D` (UNet or MMDiT) of the shapes model in `dir` (see
/// [`ctcal::shapes::ShapesPipeline`]): the architecture's noise schedule, CTCal config
/// (`teacher` overrides its teacher rule) and LoRA targets; `--full` writes a shapes model
/// folder (`model/`). A `--model` folder (`model`) is refused: a shapes model trains whole.
pub fn fit_shapes<B, D>(
    dir: &Path,
    model: Option<&Path>,
    args: &TrainArgs,
    teacher: Option<TeacherRule>,
    default_out: &str,
    device: &B::Device,
) -> Result<()>
where
    B: AutodiffAttentionBackend,
    D: ShapesDenoiserPart<B> + AutodiffModule<B> + Denoiser<B> + LoraTarget<B> + Clone,
    D::InnerModule: Denoiser<B::InnerBackend> + ShapesDenoiserPart<B::InnerBackend>,
{
    if let Some(model) = model {
        bail!(
            "--model {} takes a diffusers denoiser folder; {} is a shapes model, which trains alone",
            model.display(),
            dir.display()
        );
    }
    let (pipe, model) = load_shapes_pipeline::<B, D>(dir, device)
        .with_context(|| format!("loading the shapes model {}", dir.display()))?;
    let arch = pipe.arch;
    println!(
        "shapes {arch} model from {} (pixel space, {}x{}, word-level text encoder)",
        dir.display(),
        pipe.size,
        pipe.size
    );
    let mut ctcal = arch.ctcal();
    if let Some(rule) = teacher {
        ctcal = ctcal.with_teacher(rule);
    }
    let pipe = &pipe;
    let info = ModelInfo {
        default_out,
        save_full: Box::new(move |model: &D, out: &Path| {
            let dir = out.join("model");
            pipe.model(model.valid()).save_dir(&pipe.config, &dir)?;
            Ok(format!(
                "shapes model folder (base.safetensors, base_config.json): {}",
                dir.display()
            ))
        }),
    };
    fit(
        model,
        info,
        args,
        arch.lora(args.rank),
        args.config(ctcal),
        &arch.schedule(),
        pipe,
        pipe.size as u32,
        device,
    )
}

/// Trains `model` as `args` say and writes the exports; prints progress and a summary.
///
/// `pipe` (on the inner backend) encodes image-folder data, places nouns and renders the
/// validation images; `resolution` is the denoiser's native image side.
#[allow(clippy::too_many_arguments)]
pub fn fit<B, M, P>(
    model: M,
    info: ModelInfo<'_, M>,
    args: &TrainArgs,
    lora: LoraConfig,
    config: TrainConfig,
    schedule: &Schedule,
    pipe: &P,
    resolution: u32,
    device: &B::Device,
) -> Result<()>
where
    B: AutodiffAttentionBackend,
    M: AutodiffModule<B> + Denoiser<B> + LoraTarget<B> + Clone,
    M::InnerModule: Denoiser<B::InnerBackend>,
    P: TrainingPipeline<B::InnerBackend, Denoiser = M::InnerModule>,
{
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(info.default_out));
    let (model, trained) = if args.full {
        (model, Trained::Full)
    } else {
        let (model, report) = apply_lora(model, &lora.with_rank(args.rank), args.seed)?;
        println!(
            "LoRA rank {} on {} projections: {} trainable parameters, {} frozen",
            args.rank,
            report.adapters(),
            report.trainable_params,
            report.frozen_params
        );
        (model, Trained::Lora)
    };
    let (trainable, total) = count_params(&model);
    println!("training {trainable} of {total} parameters ({trained:?})");

    let meta = args.data.join("metadata.jsonl");
    let policy = if args.strict {
        BadRowPolicy::Fail
    } else {
        BadRowPolicy::Skip
    };
    let run = Run {
        args,
        info,
        config: &config,
        schedule,
        out: &out,
        trained,
    };
    if is_cached(&meta)? {
        let dataset = CachedFeatures::open(&meta, policy)
            .with_context(|| format!("opening the training data {}", meta.display()))?;
        report_skipped(dataset.skipped(), dataset.len(), &meta, config.batch_size)?;
        run.go(
            model,
            Arc::new(dataset),
            &CachedInputs(pipe.word_tokens()),
            pipe,
            device,
        )
    } else {
        let side = args.resolution.unwrap_or(resolution);
        let dataset = ImageFolder::open(&meta, side, policy)
            .with_context(|| format!("opening the training images {}", meta.display()))?;
        report_skipped(dataset.skipped(), dataset.len(), &meta, config.batch_size)?;
        println!(
            "training on {} images of {side}x{side} from {}",
            dataset.len(),
            meta.display()
        );
        let inputs = ImageInputs {
            pipeline: pipe,
            sample_posterior: !args.latent_mean,
        };
        run.go(model, Arc::new(dataset), &inputs, pipe, device)
    }
}

/// Whether `metadata.jsonl` lists cached features (its first row names a `.safetensors`).
fn is_cached(meta: &Path) -> Result<bool> {
    let text =
        std::fs::read_to_string(meta).with_context(|| format!("reading {}", meta.display()))?;
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("{}");
    let row: serde_json::Value = serde_json::from_str(first)
        .with_context(|| format!("{}: line 1 is not JSON", meta.display()))?;
    Ok(row["file_name"]
        .as_str()
        .is_some_and(|f| f.ends_with(".safetensors")))
}

fn report_skipped(skipped: &BadRows, len: usize, meta: &Path, batch_size: usize) -> Result<()> {
    if !skipped.0.is_empty() {
        eprintln!("{skipped}");
    }
    if len < batch_size {
        bail!(
            "{} has {len} usable samples, fewer than --batch-size {batch_size}",
            meta.display()
        );
    }
    Ok(())
}

/// One training run's settings, shared by both data kinds.
struct Run<'a, M> {
    args: &'a TrainArgs,
    info: ModelInfo<'a, M>,
    config: &'a TrainConfig,
    schedule: &'a Schedule,
    out: &'a Path,
    trained: Trained,
}

impl<M> Run<'_, M> {
    fn go<B, P, D>(
        &self,
        model: M,
        dataset: Arc<D>,
        inputs: &dyn BatchInputs<B>,
        pipe: &P,
        device: &B::Device,
    ) -> Result<()>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B> + Denoiser<B> + LoraTarget<B> + Clone,
        M::InnerModule: Denoiser<B::InnerBackend>,
        P: TrainingPipeline<B::InnerBackend, Denoiser = M::InnerModule>,
        D: Dataset + 'static,
    {
        let (args, info, config, schedule, out, trained) = (
            self.args,
            &self.info,
            self.config,
            self.schedule,
            self.out,
            self.trained,
        );
        let preview = Preview::new(&dataset, inputs, config, device)?;
        preview.write(&model, schedule, config, &out.join("maps_start.png"))?;
        let validation = Validation::new(args, &preview.captions);
        validation.render(pipe, &model.valid(), 0, out)?;

        let bar = ProgressBar::new(config.steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {per_sec} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut logs: Vec<StepLog> = Vec::new();
        let dirs = RunDirs {
            out: out.to_path_buf(),
            resume: args.resume,
        };
        let result = train(
            model,
            trained,
            dataset,
            schedule,
            config,
            &dirs,
            inputs,
            device,
            |log, model| {
                if validation.due(log.step, config.steps) {
                    validation
                        .render(pipe, &model.valid(), log.step, out)
                        .map_err(|e| ctcal::Error::Input(format!("validation images: {e:#}")))?;
                }
                bar.set_position(log.step as u64);
                bar.set_message(format!(
                    "loss {:.4} (diffusion {:.4}, ctcal {:.4}) lr {:.1e}",
                    log.loss.total, log.loss.diffusion, log.loss.ctcal, log.lr
                ));
                if let Some(skipped) = &log.skipped {
                    bar.println(skipped);
                }
                if let Some(dir) = &log.checkpoint {
                    bar.println(format!("step {}: checkpoint {}", log.step, dir.display()));
                }
                logs.push(log.clone());
                Ok(())
            },
        )?;
        bar.finish();

        let final_model = result.ema.as_ref().unwrap_or(&result.model);
        match trained {
            Trained::Lora => {
                let path = out.join("pytorch_lora_weights.safetensors");
                export_peft(final_model, &path, M::PEFT_PREFIX)?;
                println!(
                    "LoRA weights (PEFT keys under {:?}; a diffusers pipeline loads them with pipe.load_lora_weights(\"{}\")): {}",
                    M::PEFT_PREFIX,
                    out.display(),
                    path.display()
                );
            }
            Trained::Full => println!("{}", (info.save_full)(final_model, out)?),
        }
        let ae_path = out.join("autoencoder.safetensors");
        save_params(&result.ae, &ae_path, |_, _| true)?;
        preview.write(final_model, schedule, config, &out.join("maps_end.png"))?;
        save_png(
            &loss_plot(&logs, config.ctcal.lambda_ctcal),
            &out.join("loss.png"),
        )?;
        println!(
            "teacher | student maps per noun: {} (before) and {} (after); loss curves: {}",
            out.join("maps_start.png").display(),
            out.join("maps_end.png").display(),
            out.join("loss.png").display()
        );
        if let (Some(first), Some(last)) = (logs.first(), &result.last) {
            println!(
                "steps {}..{}: loss {:.4} -> {:.4} (diffusion {:.4} -> {:.4}, ctcal {:.4} -> {:.4}); metrics in {}",
                result.start_step + 1,
                last.step,
                first.loss.total,
                last.loss.total,
                first.loss.diffusion,
                last.loss.diffusion,
                first.loss.ctcal,
                last.loss.ctcal,
                out.join("metrics.jsonl").display()
            );
        }
        Ok(())
    }
}

/// A fixed validation batch (the first samples of the data) and noise for map previews.
struct Preview<B: AutodiffBackend> {
    batch: ctcal::ctcal::TrainBatch<B>,
    captions: Vec<String>,
    noise: burn::tensor::Tensor<B, 4>,
}

impl<B: AutodiffBackend> Preview<B> {
    fn new<D: Dataset>(
        dataset: &Arc<D>,
        inputs: &dyn BatchInputs<B>,
        config: &TrainConfig,
        device: &B::Device,
    ) -> Result<Self> {
        B::seed(device, config.seed);
        let n = dataset.len().min(4);
        let samples = (0..n)
            .map(|i| dataset.load(i).map_err(|bad| anyhow::anyhow!("{bad}")))
            .collect::<Result<Vec<_>>>()?;
        let cursor = ctcal::data::DataCursor::start(config.seed, dataset.len());
        let batch = ctcal::data::Batch::collate(samples, 0, cursor, Default::default())?;
        let train_batch = inputs.train_batch(&batch, device)?;
        let shape = train_batch.latents.dims();
        let noise = burn::tensor::Tensor::random(
            shape,
            burn::tensor::Distribution::Normal(0.0, 1.0),
            device,
        );
        Ok(Self {
            batch: train_batch,
            captions: batch.captions,
            noise,
        })
    }

    fn write<M>(
        &self,
        model: &M,
        schedule: &Schedule,
        config: &TrainConfig,
        path: &Path,
    ) -> Result<()>
    where
        M: AutodiffModule<B> + Denoiser<B>,
        M::InnerModule: Denoiser<B::InnerBackend>,
    {
        let (teacher, student) = preview_levels(schedule, config.ctcal.teacher);
        let img = map_preview(
            model,
            &self.batch,
            &self.captions,
            self.noise.clone(),
            schedule,
            &config.ctcal,
            teacher,
            student,
        )?;
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        save_png(&img, path)?;
        Ok(())
    }
}

/// Validation images: the same prompts and seed rendered with the model being trained, one
/// PNG row per render (`validation/step_NNNNN.png`).
struct Validation {
    prompts: Vec<String>,
    every: usize,
    config: GenerateConfig,
}

impl Validation {
    fn new(args: &TrainArgs, captions: &[String]) -> Self {
        let prompts = if args.validation_prompt.is_empty() {
            captions.iter().take(2).cloned().collect()
        } else {
            args.validation_prompt.clone()
        };
        Self {
            prompts,
            every: args.validate_every,
            config: GenerateConfig::new()
                .with_steps(args.validation_steps)
                .with_seed(args.seed),
        }
    }

    fn due(&self, step: usize, last: usize) -> bool {
        self.every > 0 && (step.is_multiple_of(self.every) || step == last)
    }

    fn render<B: burn::tensor::backend::Backend, P: TrainingPipeline<B>>(
        &self,
        pipe: &P,
        model: &P::Denoiser,
        step: usize,
        out: &Path,
    ) -> Result<()> {
        if self.every == 0 || self.prompts.is_empty() {
            return Ok(());
        }
        let prompts: Vec<&str> = self.prompts.iter().map(String::as_str).collect();
        let generated = pipe.render(model, &prompts, &self.config)?;
        let images = tensor_to_images(generated.images.mul_scalar(2.0).sub_scalar(1.0))?;
        let (w, h) = images[0].dimensions();
        let mut row = image::RgbImage::new(w * images.len() as u32, h);
        for (i, img) in images.iter().enumerate() {
            image::imageops::replace(&mut row, img, (i as u32 * w) as i64, 0);
        }
        let dir = out.join("validation");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("step_{step:05}.png"));
        row.save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        if step == 0 {
            println!(
                "validation images of {:?} every {} steps: {}",
                self.prompts,
                self.every,
                dir.display()
            );
        }
        Ok(())
    }
}
