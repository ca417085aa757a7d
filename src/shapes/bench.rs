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
use crate::ctcal::{
    CtcalConfig, LossParts, Schedule, StepDraw, TrainBatch, ctcal_step, student_loss,
};
use crate::lora::{LoraConfig, apply_lora, merge_lora};
use crate::nn::normal_tensor;

/// One fine-tuning run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finetune {
    /// Optimiser steps.
    pub steps: usize,
    /// Batch size.
    pub batch: usize,
    /// Learning rate of the adapters and the map auto-encoder (constant).
    pub lr: f64,
    /// LoRA rank on the MMDiT's attention projections (text encoder frozen).
    pub rank: usize,
    /// Loss config: `lambda_ctcal = 0` is the plain baseline.
    pub ctcal: CtcalConfig,
    /// Seed of the adapters, the batches and the noise.
    pub seed: u64,
}

/// Fine-tunes `base` on `set` and returns it with the adapters merged, plus the loss parts of
/// every step. The text encoder and the MMDiT's base weights stay frozen.
pub fn finetune<B: AutodiffAttentionBackend>(
    base: ShapesModel<B>,
    set: &ShapesSet,
    schedule: &Schedule,
    run: &Finetune,
    device: &B::Device,
) -> crate::Result<(ShapesModel<B>, Vec<LossParts>)> {
    let (denoiser, _) = apply_lora(
        base.denoiser,
        &LoraConfig::mmdit_default().with_rank(run.rank),
        run.seed,
    )?;
    let mut model = ShapesModel {
        text: burn::module::Module::no_grad(base.text),
        denoiser,
    };
    B::seed(device, run.seed);
    let mut ae = run.ctcal.autoencoder.init::<B>(device);
    let mut optim = AdamWConfig::new().init::<B, ShapesModel<B>>();
    let mut optim_ae = AdamWConfig::new().init();
    let mut rng = StdRng::seed_from_u64(run.seed ^ 0xf17e);
    let mut log = Vec::with_capacity(run.steps);
    for _ in 0..run.steps {
        let index: Vec<usize> = (0..run.batch)
            .map(|_| rng.random_range(0..set.len()))
            .collect();
        let b = set.batch::<B>(&index, &[], device)?;
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
        model = optim.step(run.lr, model, g_model);
        ae = optim_ae.step(run.lr, ae, g_ae);
        log.push(out.parts);
    }
    Ok((
        ShapesModel {
            text: model.text,
            denoiser: merge_lora(model.denoiser),
        },
        log,
    ))
}

/// Mean flow loss of `model` on `set` at each of `levels` (same noise for every model given the
/// same seed), averaged over levels: whether fine-tuning hurt denoising.
pub fn heldout_loss<B: AutodiffBackend>(
    model: &ShapesModel<B>,
    set: &ShapesSet,
    schedule: &Schedule,
    levels: &[f64],
    seed: u64,
    device: &B::Device,
) -> crate::Result<f64>
where
    B::InnerBackend: AttentionBackend,
    ShapesModel<B>: AutodiffModule<B, InnerModule = ShapesModel<B::InnerBackend>>,
{
    let inner = model.valid();
    let ae = CtcalConfig::sd3()
        .autoencoder
        .init::<B::InnerBackend>(device);
    let config = CtcalConfig::sd3().with_lambda_ctcal(0.0);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut sum, mut n) = (0.0, 0usize);
    for start in (0..set.len()).step_by(32) {
        let index: Vec<usize> = (start..(start + 32).min(set.len())).collect();
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

/// The mini-CompBench: one sample per scene of `set` (its caption, `guidance`, `steps` Euler
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
    for start in (0..set.len()).step_by(32) {
        let index: Vec<usize> = (start..(start + 32).min(set.len())).collect();
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
