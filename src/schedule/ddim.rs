//! DDIM sampling (eta = 0) as Stable Diffusion 2.1 ships it: diffusers' `DDIMScheduler`
//! (`schedulers/scheduling_ddim.py`), `set_timesteps` and `step`.

use std::path::Path;

use burn::config::Config;
use burn::tensor::{Tensor, backend::Backend};
use serde_json::Value;

use super::betas::{BetaSchedule, alphas_cumprod};
use super::spacing::{TimestepSpacing, spread};
use super::{PredictionType, Sampler};
use crate::config::ConfigFile;
use crate::error::Error;

/// Scheduler classes whose `scheduler_config.json` [`DdimConfig::from_diffusers_json`] reads
/// (their shared beta and prediction fields; sampling is DDIM's).
pub const DDIM_COMPATIBLE: &[&str] = &[
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "DDPMScheduler",
];

/// DDIM settings with diffusers' `DDIMScheduler` names; `new()` holds diffusers' defaults, so a
/// `scheduler_config.json` missing a field reads as diffusers reads it.
#[derive(Config, Debug, PartialEq)]
pub struct DdimConfig {
    /// Number of discrete training timesteps `T`.
    #[config(default = 1000)]
    pub num_train_timesteps: usize,
    /// First beta.
    #[config(default = 0.0001)]
    pub beta_start: f64,
    /// Last beta.
    #[config(default = 0.02)]
    pub beta_end: f64,
    /// How betas go from `beta_start` to `beta_end`.
    #[config(default = "BetaSchedule::Linear")]
    pub beta_schedule: BetaSchedule,
    /// What the model predicts.
    #[config(default = "PredictionType::Epsilon")]
    pub prediction_type: PredictionType,
    /// Whether the step past timestep 0 lands on `alpha = 1` (else on `alphas_cumprod[0]`).
    #[config(default = true)]
    pub set_alpha_to_one: bool,
    /// Added to every "leading" timestep (SD 2.1: 1, so its last step is timestep 1).
    #[config(default = 0)]
    pub steps_offset: usize,
    /// How inference timesteps are spread.
    #[config(default = "TimestepSpacing::Leading")]
    pub timestep_spacing: TimestepSpacing,
    /// Whether the predicted `x0` is clamped to `[-clip_sample_range, clip_sample_range]`.
    #[config(default = true)]
    pub clip_sample: bool,
    /// The clamp bound of `clip_sample`.
    #[config(default = 1.0)]
    pub clip_sample_range: f64,
    /// Rescale betas to zero terminal SNR (Lin et al. 2023).
    #[config(default = false)]
    pub rescale_betas_zero_snr: bool,
}

/// Fields read from a `scheduler_config.json`.
const KNOWN: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "prediction_type",
    "set_alpha_to_one",
    "steps_offset",
    "timestep_spacing",
    "clip_sample",
    "clip_sample_range",
    "rescale_betas_zero_snr",
];

impl DdimConfig {
    /// stabilityai/stable-diffusion-2-1 `scheduler/scheduler_config.json` (768 px):
    /// DDIMScheduler, v-prediction, scaled_linear 0.00085..0.012, `set_alpha_to_one` false,
    /// `steps_offset` 1, `clip_sample` false, "leading" spacing.
    pub fn sd21() -> Self {
        Self::sd21_base().with_prediction_type(PredictionType::VPrediction)
    }

    /// stabilityai/stable-diffusion-2-1-base (512 px): the same with epsilon prediction (that
    /// repository ships a PNDMScheduler with these shared fields).
    pub fn sd21_base() -> Self {
        Self::new()
            .with_beta_start(0.00085)
            .with_beta_end(0.012)
            .with_beta_schedule(BetaSchedule::ScaledLinear)
            .with_set_alpha_to_one(false)
            .with_steps_offset(1)
            .with_clip_sample(false)
    }

    /// Reads a pipeline's `scheduler/scheduler_config.json`.
    ///
    /// `_class_name` must be `DDIMScheduler`, or `PNDMScheduler`, `EulerDiscreteScheduler`,
    /// `DDPMScheduler` (what SD 2.x repositories ship): from those only the fields shared with
    /// DDIM (the betas, `prediction_type`, `steps_offset`, spacing...) are taken and sampling
    /// is DDIM's, as `DDIMScheduler.from_config` does. Fields outside [`DdimConfig`] are
    /// ignored: scheduler configs carry every option of their own class (`skip_prk_steps`,
    /// `use_karras_sigmas`, `_diffusers_version`...), none of which changes DDIM, except
    /// `trained_betas` and `thresholding`, which must keep their defaults (null, false).
    /// Missing fields take diffusers' `DDIMScheduler` defaults.
    pub fn from_diffusers_json(path: &Path) -> crate::Result<Self> {
        let file = ConfigFile::read(path)?;
        file.expect_class(DDIM_COMPATIBLE)?;
        file.reject_changed(&[
            ("trained_betas", Value::Null),
            ("thresholding", false.into()),
        ])?;
        let config = file.overlay(&Self::new(), KNOWN)?;
        config.validate().map_err(|m| file.error(&m))?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_train_timesteps < 2 {
            return Err(format!(
                "num_train_timesteps = {} must be at least 2",
                self.num_train_timesteps
            ));
        }
        for (name, b) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if !(0.0..1.0).contains(&b) {
                return Err(format!("{name} = {b} is outside [0, 1)"));
            }
        }
        Ok(())
    }

    /// Precomputes the cumulative alphas (float32, as diffusers); fails on a bad config.
    pub fn init(&self) -> crate::Result<DdimScheduler> {
        self.validate().map_err(Error::Config)?;
        let alphas_cumprod = alphas_cumprod(
            self.num_train_timesteps,
            self.beta_start,
            self.beta_end,
            self.beta_schedule,
            self.rescale_betas_zero_snr,
        );
        let final_alpha_cumprod = if self.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(DdimScheduler {
            config: self.clone(),
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps: Vec::new(),
        })
    }
}

/// The result of one DDIM step (diffusers `DDIMSchedulerOutput`).
#[derive(Debug, Clone)]
pub struct DdimStepOutput<B: Backend> {
    /// The sample at the next (less noisy) timestep.
    pub prev_sample: Tensor<B, 4>,
    /// The model's estimate of the clean sample `x0` (clamped if `clip_sample`).
    pub pred_original_sample: Tensor<B, 4>,
}

/// A DDIM scheduler: [`Self::set_timesteps`], then one [`Self::step`] per timestep.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    /// Its settings.
    pub config: DdimConfig,
    /// `prod_{s <= t} (1 - beta_s)` per training timestep.
    pub alphas_cumprod: Vec<f64>,
    /// The alpha past the last step (`set_alpha_to_one`).
    pub final_alpha_cumprod: f64,
    timesteps: Vec<usize>,
}

impl DdimScheduler {
    /// Chooses `n` inference timesteps, largest first, exactly as diffusers' `set_timesteps`
    /// (numpy's rounding, half to even, included), and returns them.
    ///
    /// Fails when `n` is 0 or above `num_train_timesteps`, or when `steps_offset` pushes a
    /// timestep past the last.
    pub fn set_timesteps(&mut self, n: usize) -> crate::Result<Vec<usize>> {
        let c = &self.config;
        let t = c.num_train_timesteps;
        if n == 0 || n > t {
            return Err(Error::Input(format!(
                "num_inference_steps = {n} must be in 1..={t} (num_train_timesteps)"
            )));
        }
        let timesteps = spread(c.timestep_spacing, t, n, c.steps_offset);
        if let Some(&bad) = timesteps.iter().find(|&&x| x >= t) {
            return Err(Error::Config(format!(
                "timestep {bad} (steps_offset = {}) is past num_train_timesteps = {t}",
                c.steps_offset
            )));
        }
        self.timesteps = timesteps.clone();
        Ok(timesteps)
    }

    /// The timesteps chosen by the last [`Self::set_timesteps`] (empty before).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// One deterministic DDIM step (eta = 0) from `timestep` to `timestep - T / n`.
    ///
    /// Coefficients are float32, as diffusers takes them from its float32 `alphas_cumprod`.
    ///
    /// # Shapes
    /// - `model_output`, `sample`: `[batch, c, h, w]`; the outputs have the same shape.
    pub fn step<B: Backend>(
        &self,
        model_output: Tensor<B, 4>,
        timestep: usize,
        sample: Tensor<B, 4>,
    ) -> crate::Result<DdimStepOutput<B>> {
        let c = &self.config;
        let t = c.num_train_timesteps;
        if self.timesteps.is_empty() {
            return Err(Error::Input("DDIM step before set_timesteps".into()));
        }
        if timestep >= t {
            return Err(Error::Input(format!(
                "timestep {timestep} is out of range 0..{t}"
            )));
        }
        let prev = timestep.checked_sub(t / self.timesteps.len());
        let a_t = self.alphas_cumprod[timestep] as f32;
        let a_prev = prev.map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p]) as f32;
        let (sa, sb) = (a_t.sqrt() as f64, (1.0 - a_t).sqrt() as f64);
        let (x0, eps) = match c.prediction_type {
            PredictionType::Epsilon => (
                (sample - model_output.clone().mul_scalar(sb)).div_scalar(sa),
                model_output,
            ),
            PredictionType::Sample => (
                model_output.clone(),
                (sample - model_output.mul_scalar(sa)).div_scalar(sb),
            ),
            PredictionType::VPrediction => (
                sample.clone().mul_scalar(sa) - model_output.clone().mul_scalar(sb),
                model_output.mul_scalar(sa) + sample.mul_scalar(sb),
            ),
        };
        let x0 = if c.clip_sample {
            let r = c.clip_sample_range;
            x0.clamp(-r, r)
        } else {
            x0
        };
        let keep = a_prev.sqrt() as f64;
        let direction = (1.0 - a_prev).sqrt() as f64;
        Ok(DdimStepOutput {
            prev_sample: x0.clone().mul_scalar(keep) + eps.mul_scalar(direction),
            pred_original_sample: x0,
        })
    }
}

impl Sampler for DdimScheduler {
    fn set_timesteps(&mut self, n: usize) -> crate::Result<()> {
        DdimScheduler::set_timesteps(self, n).map(|_| ())
    }

    fn model_timesteps(&self) -> Vec<f64> {
        self.timesteps.iter().map(|&t| t as f64).collect()
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn step<B: Backend>(
        &self,
        model_output: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
    ) -> crate::Result<Tensor<B, 4>> {
        let t = *self.timesteps.get(i).ok_or_else(|| {
            Error::Input(format!("step {i} of {} DDIM steps", self.timesteps.len()))
        })?;
        Ok(DdimScheduler::step(self, model_output, t, sample)?.prev_sample)
    }
}
