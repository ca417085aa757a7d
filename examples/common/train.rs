//! The training driver both `train_sd21` and `train_sd3` use: arguments, LoRA or full
//! fine-tuning, the loop with a progress bar, and the exports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, ValueEnum};
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::ctcal::{CtcalConfig, Denoiser, Schedule};
use ctcal::data::{BadRowPolicy, CachedFeatures, Dataset};
use ctcal::lora::{LoraConfig, LoraTarget, apply_lora, export_peft};
use ctcal::train::{
    LrSchedule, RunDirs, StepLog, TrainConfig, Trained, count_params, loss_plot, map_preview,
    preview_levels, save_params, train,
};
use ctcal::viz::save_png;
use ctcal::weights::save_diffusers;
use indicatif::{ProgressBar, ProgressStyle};

use super::BackendKind;

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
    /// Training data: a folder with `metadata.jsonl` over cached features (safetensors with
    /// `latents`, `encoder_hidden_states`, optional `pooled_projections`).
    #[arg(long, default_value = "weights/tiny-data")]
    pub data: PathBuf,
    /// Backend to train on.
    #[arg(long, value_enum, default_value = "ndarray")]
    pub backend: BackendKind,
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
    }
}

/// What the example knows about its model.
pub struct ModelInfo<'a> {
    /// The folder the base weights came from (its `config.json` is copied on full export).
    pub model_dir: &'a Path,
    /// Folder name of a full export (`unet` or `transformer`).
    pub folder: &'a str,
    /// Default output folder.
    pub default_out: &'a str,
}

/// Trains `model` as `args` say and writes the exports; prints progress and a summary.
pub fn fit<B, M>(
    model: M,
    info: ModelInfo<'_>,
    args: &TrainArgs,
    lora: LoraConfig,
    config: TrainConfig,
    schedule: &Schedule,
    device: &B::Device,
) -> Result<()>
where
    B: AutodiffAttentionBackend,
    M: AutodiffModule<B> + Denoiser<B> + LoraTarget<B> + Clone,
    M::InnerModule: Denoiser<B::InnerBackend>,
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
    let dataset = CachedFeatures::open(&meta, policy)
        .with_context(|| format!("opening the training data {}", meta.display()))?;
    if !dataset.skipped().0.is_empty() {
        eprintln!("{}", dataset.skipped());
    }
    if dataset.len() < config.batch_size {
        bail!(
            "{} has {} usable samples, fewer than --batch-size {}",
            meta.display(),
            dataset.len(),
            config.batch_size
        );
    }

    let dataset = Arc::new(dataset);
    let preview = Preview::new(&dataset, schedule, &config, device)?;
    preview.write(&model, schedule, &config, &out.join("maps_start.png"))?;

    let bar = ProgressBar::new(config.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {per_sec} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut logs: Vec<StepLog> = Vec::new();
    let dirs = RunDirs {
        out: out.clone(),
        resume: args.resume,
    };
    // Cached features name their nouns by token position; a word maps to one token otherwise.
    let result = train(
        model,
        trained,
        dataset,
        schedule,
        &config,
        &dirs,
        &|_| 1,
        device,
        |log| {
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
        },
    )?;
    bar.finish();

    let final_model = result.ema.as_ref().unwrap_or(&result.model);
    match trained {
        Trained::Lora => {
            let path = out.join("pytorch_lora_weights.safetensors");
            export_peft(final_model, &path, M::PEFT_PREFIX)?;
            println!(
                "LoRA weights for diffusers' pipe.load_lora_weights(\"{}\"): {}",
                out.display(),
                path.display()
            );
        }
        Trained::Full => {
            let folder = out.join(info.folder);
            let n = save_diffusers(
                final_model,
                &info.model_dir.join("config.json"),
                &folder,
                |_| false,
            )?;
            println!("{n} tensors in diffusers layout: {}", folder.display());
        }
    }
    let ae_path = out.join("autoencoder.safetensors");
    save_params(&result.ae, &ae_path, |_, _| true)?;
    preview.write(final_model, schedule, &config, &out.join("maps_end.png"))?;
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

/// A fixed validation batch (the first samples of the data) and noise for map previews.
struct Preview<B: AutodiffBackend> {
    batch: ctcal::ctcal::TrainBatch<B>,
    captions: Vec<String>,
    noise: burn::tensor::Tensor<B, 4>,
}

impl<B: AutodiffBackend> Preview<B> {
    fn new<D: Dataset>(
        dataset: &Arc<D>,
        _schedule: &Schedule,
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
        let train_batch = batch.train_batch::<B>(device, &|_: &str| 1)?;
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
