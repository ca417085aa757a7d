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
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{
    CtcalConfig, MapAutoEncoder, NounGroups, TeacherRule, ctcal_loss, noun_maps, token_maps,
};
use crate::attention::{AttentionBackend, AttentionHook, AttentionKind, AttentionStore, NoHook};
use crate::error::{Error, Result};
use crate::mmdit::SD3Transformer2DModel;
use crate::precision::{cast_to, upcast};
use crate::schedule::{DdpmSchedule, FlowSchedule};
use crate::unet::UNet2DConditionModel;

/// Text conditioning of a batch.
#[derive(Debug, Clone)]
pub struct TextCond<B: Backend> {
    /// Per-token embeddings `[batch, tokens, dim]`.
    pub hidden: Tensor<B, 3>,
    /// Pooled embedding `[batch, dim]` (SD 3); `None` for the UNet.
    pub pooled: Option<Tensor<B, 2>>,
}

impl<B: AutodiffBackend> TextCond<B> {
    /// The same tensors on the inner backend (no graph).
    pub fn inner(&self) -> TextCond<B::InnerBackend> {
        TextCond {
            hidden: self.hidden.clone().inner(),
            pooled: self.pooled.clone().map(Tensor::inner),
        }
    }
}

/// A text-conditioned denoiser whose attention layers take a hook: the UNet and the MMDiT.
pub trait Denoiser<B: Backend> {
    /// Predicts the target at `timesteps` (the values the model is fed: DDPM steps, or
    /// `1000 * sigma` for flow models).
    ///
    /// # Shapes
    /// - `x`: `[batch, c, h, w]`, `timesteps`: `[batch]`, returns `[batch, c, h, w]`
    fn denoise<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &TextCond<B>,
        hook: &mut H,
    ) -> Result<Tensor<B, 4>>;

    /// The kind of attention whose maps CTCal supervises.
    fn map_kind(&self) -> AttentionKind;
}

impl<B: AttentionBackend> Denoiser<B> for UNet2DConditionModel<B> {
    fn denoise<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &TextCond<B>,
        hook: &mut H,
    ) -> Result<Tensor<B, 4>> {
        self.check_inputs(x.dims(), timesteps.dims(), cond.hidden.dims())?;
        // Inputs in the parameters' type (bf16 for a `cast_params` copy), prediction wide.
        let dtype = self.conv_in.weight.val().dtype();
        let (x, hidden) = (cast_to(x, dtype), cast_to(cond.hidden.clone(), dtype));
        Ok(upcast(self.forward_with_hook(x, timesteps, hidden, hook)))
    }

    fn map_kind(&self) -> AttentionKind {
        AttentionKind::Cross
    }
}

impl<B: AttentionBackend> Denoiser<B> for SD3Transformer2DModel<B> {
    fn denoise<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &TextCond<B>,
        hook: &mut H,
    ) -> Result<Tensor<B, 4>> {
        let pooled = cond.pooled.clone().ok_or_else(|| {
            Error::Input(
                "the SD 3 transformer needs pooled text embeddings (TextCond::pooled)".into(),
            )
        })?;
        self.check_inputs(
            x.dims(),
            timesteps.dims(),
            cond.hidden.dims(),
            pooled.dims(),
        )?;
        let dtype = self.pos_embed.proj.weight.val().dtype();
        let (x, hidden) = (cast_to(x, dtype), cast_to(cond.hidden.clone(), dtype));
        let pooled = cast_to(pooled, dtype);
        Ok(upcast(
            self.forward_with_hook(x, timesteps, hidden, pooled, hook),
        ))
    }

    fn map_kind(&self) -> AttentionKind {
        AttentionKind::Joint
    }
}

/// The noise process a model is trained with.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// SD 2.1's DDPM; levels are integer timesteps `0..T`.
    Ddpm(DdpmSchedule),
    /// SD 3's rectified flow; levels are sigmas in `[0, 1]`.
    Flow(FlowSchedule),
}

impl Schedule {
    /// Draws `(student, teacher)` levels for a batch.
    pub fn sample_levels<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        batch: usize,
        rule: TeacherRule,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let draw = |rng: &mut R| match self {
            Schedule::Ddpm(s) => rng.random_range(0..s.num_train_timesteps()) as f64,
            Schedule::Flow(s) => s.sample_sigma(rng),
        };
        let mut student = Vec::with_capacity(batch);
        let mut teacher = Vec::with_capacity(batch);
        for _ in 0..batch {
            let a = draw(rng);
            let t = match (rule, self) {
                (TeacherRule::SmallerOfTwo, _) => {
                    let b = draw(rng);
                    student.push(a.max(b));
                    teacher.push(a.min(b));
                    continue;
                }
                (TeacherRule::FixedTimestep(k), Schedule::Ddpm(_)) => k as f64,
                (TeacherRule::FixedTimestep(k), Schedule::Flow(s)) => {
                    k as f64 / s.config.num_train_timesteps as f64
                }
                (TeacherRule::FixedSigma(s), Schedule::Flow(_)) => s,
                (TeacherRule::FixedSigma(_), Schedule::Ddpm(_)) => {
                    return Err(Error::Config(
                        "teacher rule FixedSigma needs a flow schedule; use FixedTimestep".into(),
                    ));
                }
            };
            student.push(a);
            teacher.push(t);
        }
        Ok((student, teacher))
    }

    fn timesteps(&self, levels: &[f64]) -> Result<Vec<usize>> {
        levels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                if l < 0.0 || l.fract() != 0.0 {
                    Err(Error::Input(format!(
                        "timestep[{i}] = {l} is not a whole step"
                    )))
                } else {
                    Ok(l as usize)
                }
            })
            .collect()
    }

    /// The noised latents at `levels` (one per sample).
    pub fn noisy<B: Backend>(
        &self,
        x0: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        levels: &[f64],
    ) -> Result<Tensor<B, 4>> {
        match self {
            Schedule::Ddpm(s) => s.add_noise(x0, noise, &self.timesteps(levels)?),
            Schedule::Flow(s) => s.add_noise(x0, noise, levels),
        }
    }

    /// The prediction target at `levels`.
    pub fn target<B: Backend>(
        &self,
        x0: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        levels: &[f64],
    ) -> Result<Tensor<B, 4>> {
        match self {
            Schedule::Ddpm(s) => s.target(x0, noise, &self.timesteps(levels)?),
            Schedule::Flow(s) => Ok(s.target(x0, noise)),
        }
    }

    /// What the model is fed for `levels`.
    pub fn model_timesteps(&self, levels: &[f64]) -> Vec<f32> {
        match self {
            Schedule::Ddpm(_) => levels.iter().map(|&l| l as f32).collect(),
            Schedule::Flow(s) => levels.iter().map(|&l| s.timestep(l) as f32).collect(),
        }
    }

    /// The CTCal weight `w`: `t / T` (DDPM) or `sigma` (flow), as the paper sets it.
    pub fn ctcal_weight(&self, level: f64) -> f64 {
        match self {
            Schedule::Ddpm(s) => level / s.num_train_timesteps() as f64,
            Schedule::Flow(_) => level,
        }
    }

    /// The diffusion-loss weight of a sample (min-SNR-gamma for DDPM when set, else 1).
    pub fn diffusion_weight(&self, level: f64, min_snr_gamma: Option<f64>) -> f64 {
        match (self, min_snr_gamma) {
            (Schedule::Ddpm(s), Some(g)) => s.min_snr_weight(level as usize, g),
            _ => 1.0,
        }
    }
}

/// A training batch.
#[derive(Debug, Clone)]
pub struct TrainBatch<B: Backend> {
    /// Clean latents `[batch, c, h, w]` (already scaled).
    pub latents: Tensor<B, 4>,
    /// Text conditioning.
    pub cond: TextCond<B>,
    /// Noun token groups of each caption.
    pub nouns: Vec<NounGroups>,
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
    inner.denoise(noisy, t, &batch.cond.inner(), &mut store)?;
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
    let teacher = if use_ctcal {
        Some(teacher_maps(model, batch, draw, schedule, config)?)
    } else {
        None
    };
    student_loss(model, ae, batch, draw, schedule, config, teacher)
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
    })
}
