//! The benchmark's experiment pieces: a LoRA fine-tune of the base model with or without CTCal,
//! the flow loss on held-out scenes, and the detector's scores of sampled images.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::data::ShapesSet;
use super::detect::{Detector, satisfies};
use super::oracle::OracleInputs;
use super::sample::sample_images;
use ctcal::attention::{AttentionBackend, AutodiffAttentionBackend};
use ctcal::calibration::{CtcalConfig, StepDraw, TrainBatch, student_loss};
use ctcal::lora::merge_lora;
use ctcal::nn::normal_tensor;
use ctcal::pipeline::shapes::{ShapesModel, ShapesModelConfig, ShapesModelInputs};
use ctcal::train::{Event, StepLog, TrainConfig, Trainer};

/// One training run of a shapes model: the base model's pretraining (all parameters, plain
/// loss, caption dropout) or a fine-tune (LoRA adapters, with or without CTCal).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainRun {
    /// Optimiser steps.
    pub steps: usize,
    /// Batch size.
    pub batch: usize,
    /// Peak learning rate (the model and the map auto-encoder).
    pub lr: f64,
    /// Linear warm-up steps (0: constant from the start).
    pub warmup_steps: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// `Some(rank)`: freeze the model and train LoRA adapters of this rank on the denoiser's
    /// attention projections (merged at the end); `None`: train every parameter.
    pub lora_rank: Option<usize>,
    /// Share of captions replaced by the empty one (for classifier-free guidance).
    pub caption_dropout: f64,
    /// Loss config (see [`ShapesArch::ctcal`](ctcal::pipeline::shapes::ShapesArch::ctcal)): `lambda_ctcal = 0` is the plain diffusion loss.
    pub ctcal: CtcalConfig,
    /// Seed of the adapters, the auto-encoder, the data order and the noise.
    pub seed: u64,
    /// Checkpoint every this many steps (and at the end); 0: only at the end.
    pub checkpoint_every: usize,
    /// The oracle arm: each noun's true mask is its teacher map ([`OracleInputs`]).
    #[serde(default)]
    pub oracle: bool,
    /// Stop after the first step past this many seconds, checkpointed: a resumed run
    /// continues ([`Trainer::time_limit`]).
    #[serde(default)]
    pub time_limit_s: Option<f64>,
}

impl TrainRun {
    /// A fine-tune: LoRA of `rank` on the denoiser, text encoder frozen, constant `lr`, CTCal or
    /// plain by `ctcal`.
    pub fn finetune(steps: usize, batch: usize, lr: f64, rank: usize, ctcal: CtcalConfig) -> Self {
        TrainRun {
            steps,
            batch,
            lr,
            warmup_steps: 0,
            weight_decay: 1e-4,
            lora_rank: Some(rank),
            caption_dropout: 0.0,
            ctcal,
            seed: 0,
            checkpoint_every: 0,
            oracle: false,
            time_limit_s: None,
        }
    }

    /// The library's training settings of this run.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig::new(self.ctcal.clone())
            .with_steps(self.steps)
            .with_batch_size(self.batch)
            .with_lr(self.lr)
            .with_warmup_steps(self.warmup_steps)
            .with_weight_decay(self.weight_decay)
            .with_caption_dropout(self.caption_dropout)
            .with_seed(self.seed)
            .with_checkpoint_every(self.checkpoint_every)
    }
}

/// Trains `model` (of `config`) on `set` as `run` says, on its architecture's noise schedule,
/// through the library's [`Trainer`] with `out` as its output folder (resuming from its latest
/// checkpoint with `resume`; a fresh run clears `out`, which the bench owns), and returns it
/// with any adapters merged. `on_step` sees every step.
#[allow(clippy::too_many_arguments)]
pub fn train_shapes<B: AutodiffAttentionBackend>(
    model: ShapesModel<B>,
    config: &ShapesModelConfig,
    set: Arc<ShapesSet>,
    run: &TrainRun,
    out: &Path,
    resume: bool,
    device: &B::Device,
    mut on_step: impl FnMut(&StepLog),
) -> ctcal::Result<ShapesModel<B>> {
    let arch = config.arch();
    let mut trainer = Trainer::new(run.train_config())
        .output_dir(out)
        .resume(resume)
        .overwrite(!resume)
        .listen(|event| {
            if let Event::Step(log) = event {
                on_step(log)
            }
        });
    if let Some(rank) = run.lora_rank {
        trainer = trainer.lora(arch.lora(rank));
    }
    if let Some(seconds) = run.time_limit_s {
        let limit = std::time::Duration::try_from_secs_f64(seconds)
            .map_err(|e| ctcal::Error::Config(format!("time limit {seconds} s: {e}")))?;
        trainer = trainer.time_limit(limit);
    }
    let inputs = ShapesModelInputs::new(config.clone());
    let fitted = if run.oracle {
        let grid = set.size / run.ctcal.map_downscale.max(1);
        let oracle = OracleInputs {
            inner: inputs,
            set: set.clone(),
            grid,
        };
        trainer.fit(model, &oracle, set, &arch.schedule(), device)?
    } else {
        trainer.fit(model, &inputs, set, &arch.schedule(), device)?
    };
    Ok(merge_lora(fitted.model))
}

/// Mean diffusion loss of `model` on `set` at each of `levels` of its architecture's schedule
/// (same noise for every model given the same seed), averaged over levels: whether
/// fine-tuning hurt denoising.
pub fn heldout_loss<B: AutodiffBackend>(
    model: &ShapesModel<B>,
    set: &ShapesSet,
    levels: &[f64],
    seed: u64,
    device: &B::Device,
) -> ctcal::Result<f64>
where
    B::InnerBackend: AttentionBackend,
    ShapesModel<B>: AutodiffModule<B, InnerModule = ShapesModel<B::InnerBackend>>,
{
    let inner = model.valid();
    let arch = inner.arch();
    let schedule = &arch.schedule();
    let config = arch.ctcal().with_lambda_ctcal(0.0);
    let ae = config.autoencoder.init::<B::InnerBackend>(device);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut sum, mut n) = (0.0, 0usize);
    for index in set.chunks(32) {
        let b = set.batch::<B::InnerBackend>(&index, &[], device)?;
        let cond = inner.encode(&b.ids, device)?;
        let noise = normal_tensor(&mut rng, b.pixels.dims(), device);
        let data = TrainBatch {
            latents: b.pixels,
            cond,
            nouns: b.nouns,
            teacher: None,
        };
        for &level in levels {
            let draw = StepDraw {
                noise: noise.clone(),
                student: vec![level; index.len()],
                teacher: vec![level; index.len()],
            };
            let out = student_loss(&inner.denoiser, &ae, &data, &draw, schedule, &config, None)?;
            sum += out.parts.diffusion * index.len() as f64;
            n += index.len();
        }
    }
    Ok(sum / n.max(1) as f64)
}

/// The mini-CompBench: one sample per scene of `set` (its caption, `guidance`, `steps` sampler
/// steps, seeded noise), scored by the detector; the share of satisfied captions per category
/// and overall.
pub fn compbench<B: AttentionBackend>(
    model: &ShapesModel<B>,
    set: &ShapesSet,
    steps: usize,
    guidance: f64,
    seed: u64,
    device: &B::Device,
) -> ctcal::Result<BTreeMap<String, f64>> {
    let outcomes = compbench_outcomes(model, set, steps, guidance, seed, device)?;
    Ok(compbench_shares(set, &outcomes))
}

/// The share of satisfied captions per category and overall, from [`compbench_outcomes`].
pub fn compbench_shares(set: &ShapesSet, outcomes: &[bool]) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (index, ok) in outcomes.iter().enumerate() {
        for key in [set.scenes[index].claim.category(), "overall"] {
            let e = counts.entry(key.to_string()).or_default();
            e.0 += *ok as usize;
            e.1 += 1;
        }
    }
    counts
        .into_iter()
        .map(|(k, (ok, n))| (k, ok as f64 / n as f64))
        .collect()
}

/// [`compbench`] caption by caption: whether the sample for scene `i` of `set` satisfies its
/// caption (the same noise for every model given the same seed, so models pair up).
pub fn compbench_outcomes<B: AttentionBackend>(
    model: &ShapesModel<B>,
    set: &ShapesSet,
    steps: usize,
    guidance: f64,
    seed: u64,
    device: &B::Device,
) -> ctcal::Result<Vec<bool>> {
    let det = Detector::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcomes = Vec::with_capacity(set.len());
    let s = set.size;
    for index in set.chunks(32) {
        let ids: Vec<Vec<usize>> = index.iter().map(|&i| set.ids[i].clone()).collect();
        let noise = normal_tensor(&mut rng, [index.len(), 3, s, s], device);
        let images = sample_images(model, &ids, set, noise, steps, guidance)?;
        for (k, img) in images.iter().enumerate() {
            let claim = &set.scenes[index[k]].claim;
            outcomes.push(satisfies(claim, &det.detect(img, s)));
        }
    }
    Ok(outcomes)
}
