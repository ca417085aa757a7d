//! One CTCal training step, written once against the [`Denoiser`] trait.
//!
//! 1. Noise the latents at the teacher and student levels with the *same* noise.
//! 2. Teacher: forward on the inner (non-autodiff) backend, so no graph is kept, capturing the
//!    selected maps; they re-enter the autodiff backend as constants.
//! 3. Student: forward with an [`AttentionStore`] whose maps keep their graph.
//! 4. `L = L_diff + lambda_ctcal * mean_b w(t_b) L_ctcal_b`; the caller runs `backward`.

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{CtcalConfig, MapAutoEncoder, ctcal_loss, noun_maps, token_maps};
use crate::attention::{AttentionStore, NoHook};
use crate::denoiser::{Denoiser, TextCond};
use crate::error::{Error, Result};
use crate::nouns::NounGroups;
use crate::schedule::Schedule;

/// A training batch.
#[derive(Debug, Clone)]
pub struct TrainBatch<B: Backend> {
    /// Clean latents `[batch, c, h, w]` (already scaled).
    pub latents: Tensor<B, 4>,
    /// Text conditioning.
    pub cond: TextCond<B>,
    /// Noun token groups of each caption.
    pub nouns: Vec<NounGroups>,
    /// Teacher maps given with the batch, replacing the teacher pass: per sample, one
    /// non-negative `[nouns, h, w]` map per noun on the common map grid (`None` for a sample
    /// without nouns). An oracle's true per-noun masks make the loss's ceiling measurable; `None`
    /// (the method) takes the model's own maps at the teacher level.
    pub teacher: Option<Vec<Option<Tensor<B, 3>>>>,
}

/// The randomness of one step, explicit so runs and tests are reproducible.
#[derive(Debug, Clone)]
pub struct StepDraw<B: Backend> {
    /// Noise shared by teacher and student, shaped like the latents.
    pub noise: Tensor<B, 4>,
    /// Student level of each sample.
    pub student: Vec<f64>,
    /// Teacher level of each sample.
    pub teacher: Vec<f64>,
}

impl<B: Backend> StepDraw<B> {
    /// The draw of samples `rows` (a data-parallel peer's share of a whole batch's draw).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Self> {
        let n = self.student.len();
        if rows.start > rows.end || rows.end > n {
            return Err(Error::Input(format!(
                "rows {rows:?} of a draw for {n} samples"
            )));
        }
        Ok(Self {
            noise: self.noise.clone().slice(rows.clone()),
            student: self.student[rows.clone()].to_vec(),
            teacher: self.teacher[rows].to_vec(),
        })
    }
}

/// The loss and its parts as numbers, for logging.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossParts {
    /// `diffusion + lambda_ctcal * ctcal`.
    pub total: f64,
    /// Weighted mean squared error of the prediction.
    pub diffusion: f64,
    /// `mean_b w_b L_ctcal_b`, before `lambda_ctcal`.
    pub ctcal: f64,
    /// Pixel term, averaged over samples with nouns.
    pub pixel: f64,
    /// Semantic term.
    pub semantic: f64,
    /// Reconstruction term.
    pub recon: f64,
    /// Subject-balancing term.
    pub balance: f64,
}

/// The step's loss tensor (call `backward` on it) and its parts.
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend> {
    /// The total loss, on the autodiff graph.
    pub loss: Tensor<B, 1>,
    /// Its parts as numbers.
    pub parts: LossParts,
    /// The samples that had nouns (those `pixel` ... `balance` average over): what a
    /// data-parallel run weighs each peer's parts by.
    pub samples_with_nouns: usize,
}

fn per_sample_timesteps<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// The teacher's per-noun maps, computed on the inner backend (no graph) and returned as
/// constants of the autodiff backend.
pub fn teacher_maps<B, M>(
    model: &M,
    batch: &TrainBatch<B>,
    draw: &StepDraw<B>,
    schedule: &Schedule,
    config: &CtcalConfig,
) -> Result<Vec<Option<Tensor<B, 3>>>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Denoiser<B>,
    M::InnerModule: Denoiser<B::InnerBackend>,
{
    let device = batch.latents.device();
    let inner = model.valid();
    let x0 = batch.latents.clone().inner();
    let noisy = schedule.noisy(x0, draw.noise.clone().inner(), &draw.teacher)?;
    let t = per_sample_timesteps(schedule.model_timesteps(&draw.teacher), &device);
    let mut store = AttentionStore::new(config.site_filter(model.map_kind()));
    // Only the maps are read: the pass may stop after the last supervised layer.
    inner.capture_maps(noisy, t, &batch.cond.inner(), &mut store)?;
    let grid = common_grid(batch.latents.dims(), config)?;
    let maps = noun_maps(token_maps(&store.take(), grid)?, &batch.nouns)?;
    Ok(maps
        .into_iter()
        .map(|m| m.map(Tensor::from_inner))
        .collect())
}

fn common_grid(latents: [usize; 4], config: &CtcalConfig) -> Result<[usize; 2]> {
    let [_, _, h, w] = latents;
    let d = config.map_downscale.max(1);
    if h < d || w < d {
        return Err(Error::Input(format!(
            "latents of {h}x{w} are smaller than map_downscale = {d}"
        )));
    }
    Ok([h / d, w / d])
}

/// One CTCal step: returns the total loss (on the graph) and its parts.
///
/// With `lambda_ctcal = 0`, or when no caption has a noun, the teacher pass and the hooks are
/// skipped and the step is a plain diffusion step.
pub fn ctcal_step<B, M>(
    model: &M,
    ae: &MapAutoEncoder<B>,
    batch: &TrainBatch<B>,
    draw: &StepDraw<B>,
    schedule: &Schedule,
    config: &CtcalConfig,
) -> Result<StepOutput<B>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Denoiser<B>,
    M::InnerModule: Denoiser<B::InnerBackend>,
{
    check_draw(batch, draw)?;
    let use_ctcal = config.lambda_ctcal != 0.0 && batch.nouns.iter().any(|n| !n.is_empty());
    let teacher = match (&batch.teacher, use_ctcal) {
        (_, false) => None,
        (Some(given), true) => Some(given_teacher(given, batch, config)?),
        (None, true) => Some(teacher_maps(model, batch, draw, schedule, config)?),
    };
    student_loss(model, ae, batch, draw, schedule, config, teacher)
}

/// Given teacher maps, checked against the batch: one entry per sample, one map per noun, each
/// on the common map grid; detached (a target, like the teacher pass's maps).
fn given_teacher<B: Backend>(
    given: &[Option<Tensor<B, 3>>],
    batch: &TrainBatch<B>,
    config: &CtcalConfig,
) -> Result<Vec<Option<Tensor<B, 3>>>> {
    let [h, w] = common_grid(batch.latents.dims(), config)?;
    if given.len() != batch.nouns.len() {
        return Err(Error::Input(format!(
            "{} given teacher entries for a batch of {}",
            given.len(),
            batch.nouns.len()
        )));
    }
    given
        .iter()
        .zip(&batch.nouns)
        .enumerate()
        .map(|(b, (map, nouns))| match map {
            None if nouns.is_empty() => Ok(None),
            Some(m) if m.dims() == [nouns.len(), h, w] => Ok(Some(m.clone().detach())),
            other => Err(Error::Input(format!(
                "sample {b}: given teacher maps {:?} for {} nouns on the {h}x{w} map grid",
                other.as_ref().map(|m| m.dims()),
                nouns.len()
            ))),
        })
        .collect()
}

fn check_draw<B: Backend>(batch: &TrainBatch<B>, draw: &StepDraw<B>) -> Result<()> {
    let [b, _, _, _] = batch.latents.dims();
    if draw.student.len() != b || draw.teacher.len() != b || batch.nouns.len() != b {
        return Err(Error::Input(format!(
            "batch of {b} with {} student levels, {} teacher levels and {} noun lists",
            draw.student.len(),
            draw.teacher.len(),
            batch.nouns.len()
        )));
    }
    if draw.noise.dims() != batch.latents.dims() {
        return Err(Error::Input(format!(
            "noise has shape {:?}, latents {:?}",
            draw.noise.dims(),
            batch.latents.dims()
        )));
    }
    Ok(())
}

/// The student half of [`ctcal_step`] given the teacher's noun maps (`None`: plain diffusion
/// loss, no hooks).
pub fn student_loss<B: Backend, M: Denoiser<B>>(
    model: &M,
    ae: &MapAutoEncoder<B>,
    batch: &TrainBatch<B>,
    draw: &StepDraw<B>,
    schedule: &Schedule,
    config: &CtcalConfig,
    teacher: Option<Vec<Option<Tensor<B, 3>>>>,
) -> Result<StepOutput<B>> {
    check_draw(batch, draw)?;
    let device = batch.latents.device();
    let [b, _, _, _] = batch.latents.dims();

    // 1. Student forward, capturing maps only when there is a teacher to match.
    let x0 = batch.latents.clone();
    let noisy = schedule.noisy(x0.clone(), draw.noise.clone(), &draw.student)?;
    let target = schedule.target(x0, draw.noise.clone(), &draw.student)?;
    let t = per_sample_timesteps(schedule.model_timesteps(&draw.student), &device);
    let mut store = AttentionStore::new(config.site_filter(model.map_kind()));
    let pred = match teacher {
        Some(_) => model.denoise(noisy, t, &batch.cond, &mut store)?,
        None => model.denoise(noisy, t, &batch.cond, &mut NoHook)?,
    };

    // 2. Diffusion loss: per-sample MSE, weighted, averaged over the batch.
    let per_sample = (pred - target)
        .powi_scalar(2)
        .reshape([b as i32, -1])
        .mean_dim(1); // [b, 1]
    let weights: Vec<f32> = draw
        .student
        .iter()
        .map(|&l| schedule.diffusion_weight(l, config.min_snr_gamma) as f32)
        .collect();
    let weights = Tensor::<B, 2>::from_data(TensorData::new(weights, [b, 1]), &device);
    let diffusion = (per_sample * weights).mean();
    let mut parts = LossParts {
        diffusion: diffusion.clone().into_scalar().elem::<f64>(),
        ..LossParts::default()
    };
    let Some(teacher) = teacher else {
        parts.total = parts.diffusion;
        return Ok(StepOutput {
            loss: diffusion,
            parts,
            samples_with_nouns: 0,
        });
    };

    // 3. CTCal loss on the student's noun maps against the teacher's.
    let grid = common_grid(batch.latents.dims(), config)?;
    let student = noun_maps(token_maps(&store.take(), grid)?, &batch.nouns)?;
    let w: Vec<f64> = draw
        .student
        .iter()
        .map(|&l| schedule.ctcal_weight(l))
        .collect();
    let ctcal = ctcal_loss(&student, &teacher, &w, ae, config, &device)?;
    parts.ctcal = ctcal.loss.clone().into_scalar().elem::<f64>();
    [parts.pixel, parts.semantic, parts.recon, parts.balance] = ctcal.parts;
    parts.total = parts.diffusion + config.lambda_ctcal * parts.ctcal;
    Ok(StepOutput {
        loss: diffusion + ctcal.loss.mul_scalar(config.lambda_ctcal),
        parts,
        samples_with_nouns: ctcal.samples_with_nouns,
    })
}
