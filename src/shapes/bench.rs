//! The benchmark's experiment pieces: a LoRA fine-tune of the base model with or without CTCal,
//! the flow loss on held-out scenes, and the detector's scores of sampled images.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::data::ShapesSet;
use super::detect::{Detector, satisfies};
use super::model::ShapesModel;
use super::sample::sample_images;
use crate::attention::{AttentionBackend, AutodiffAttentionBackend};
use crate::ctcal::{CtcalConfig, LossParts, StepDraw, TrainBatch, ctcal_step, student_loss};
use crate::lora::{apply_lora, merge_lora};
use crate::nn::normal_tensor;

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
    /// Loss config (see [`ShapesArch::ctcal`](super::ShapesArch::ctcal)): `lambda_ctcal = 0` is
    /// the plain diffusion loss.
    pub ctcal: CtcalConfig,
    /// Seed of the adapters, the auto-encoder, the batches and the noise.
    pub seed: u64,
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
        }
    }
}

/// Trains `model` on `set` as `run` says, on its architecture's noise schedule, and returns
/// it (adapters merged), calling `on_step(step, parts)` after every step.
pub fn train_shapes<B: AutodiffAttentionBackend>(
    model: ShapesModel<B>,
    set: &ShapesSet,
    run: &TrainRun,
    device: &B::Device,
    mut on_step: impl FnMut(usize, &LossParts),
) -> crate::Result<ShapesModel<B>> {
    let arch = model.arch();
    let schedule = &arch.schedule();
    let mut model = match run.lora_rank {
        Some(rank) => {
            let config = arch.lora(rank);
            ShapesModel {
                text: burn::module::Module::no_grad(model.text),
                denoiser: apply_lora(model.denoiser, &config, run.seed)?.0,
            }
        }
        None => model,
    };
    B::seed(device, run.seed);
    let mut ae = run.ctcal.autoencoder.init::<B>(device);
    let adamw = AdamWConfig::new().with_weight_decay(run.weight_decay as f32);
    let mut optim = adamw.init::<B, ShapesModel<B>>();
    let mut optim_ae = adamw.init();
    let mut rng = StdRng::seed_from_u64(run.seed);
    for step in 0..run.steps {
        let index: Vec<usize> = (0..run.batch)
            .map(|_| rng.random_range(0..set.len()))
            .collect();
        let dropped: Vec<bool> = if run.caption_dropout > 0.0 {
            (0..run.batch)
                .map(|_| rng.random_bool(run.caption_dropout))
                .collect()
        } else {
            Vec::new()
        };
        let b = set.batch::<B>(&index, &dropped, device)?;
        let cond = model.encode(&b.ids, device)?;
        let (student, teacher) = schedule.sample_levels(&mut rng, run.batch, run.ctcal.teacher)?;
        let draw = StepDraw {
            noise: normal_tensor::<B, 4>(&mut rng, b.pixels.dims(), device),
            student,
            teacher,
        };
        let data = TrainBatch {
            latents: b.pixels,
            cond,
            nouns: b.nouns,
        };
        let out = ctcal_step(&model.denoiser, &ae, &data, &draw, schedule, &run.ctcal)?;
        let mut grads = out.loss.backward();
        let g_model = GradientsParams::from_module(&mut grads, &model);
        let g_ae = GradientsParams::from_module(&mut grads, &ae);
        let lr = if run.warmup_steps == 0 {
            run.lr
        } else {
            run.lr * ((step + 1) as f64 / run.warmup_steps as f64).min(1.0)
        };
        model = optim.step(lr, model, g_model);
        ae = optim_ae.step(lr, ae, g_ae);
        on_step(step, &out.parts);
    }
    Ok(ShapesModel {
        text: model.text,
        denoiser: merge_lora(model.denoiser),
    })
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
) -> crate::Result<f64>
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
) -> crate::Result<BTreeMap<String, f64>> {
    let det = Detector::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let s = set.size;
    for index in set.chunks(32) {
        let ids: Vec<Vec<usize>> = index.iter().map(|&i| set.ids[i].clone()).collect();
        let noise = normal_tensor(&mut rng, [index.len(), 3, s, s], device);
        let images = sample_images(model, &ids, set, noise, steps, guidance)?;
        for (k, img) in images.iter().enumerate() {
            let claim = &set.scenes[index[k]].claim;
            let ok = satisfies(claim, &det.detect(img, s)) as usize;
            for key in [claim.category(), "overall"] {
                let e = counts.entry(key.to_string()).or_default();
                e.0 += ok;
                e.1 += 1;
            }
        }
    }
    Ok(counts
        .into_iter()
        .map(|(k, (ok, n))| (k, ok as f64 / n as f64))
        .collect())
}
