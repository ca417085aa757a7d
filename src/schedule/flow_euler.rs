//! Euler sampling of a rectified flow as SD 3 ships it: diffusers'
//! `FlowMatchEulerDiscreteScheduler` (`schedulers/scheduling_flow_match_euler_discrete.py`)
//! with a static shift, `set_timesteps` and `step`.

use std::path::Path;

use burn::config::Config;
use burn::tensor::{Tensor, backend::Backend};
use serde_json::Value;

use super::Sampler;
use super::flow::shift_sigma;
use crate::config::ConfigFile;
use crate::error::Error;

/// Flow-matching Euler settings with diffusers' names; `new()` holds diffusers' defaults.
///
/// Only the static shift is ported: `use_dynamic_shifting` (FLUX-style resolution-dependent
/// shift), Karras / exponential / beta sigmas, `invert_sigmas`, `shift_terminal` and
/// stochastic sampling are rejected by [`Self::from_diffusers_json`] rather than carried as
/// fields that would fail at run time.
#[derive(Config, Debug, PartialEq)]
pub struct FlowEulerConfig {
    /// Number of training timesteps `T`; the model is fed `T * sigma`.
    #[config(default = 1000)]
    pub num_train_timesteps: usize,
    /// Timestep shift `k` in `k s / (1 + (k - 1) s)`.
    #[config(default = 1.0)]
    pub shift: f64,
}

impl FlowEulerConfig {
    /// stabilityai/stable-diffusion-3-medium-diffusers `scheduler/scheduler_config.json`:
    /// FlowMatchEulerDiscreteScheduler, 1000 timesteps, shift 3.0.
    pub fn sd3_medium() -> Self {
        Self::new().with_shift(3.0)
    }

    /// Reads a pipeline's `scheduler/scheduler_config.json` (`_class_name`
    /// `FlowMatchEulerDiscreteScheduler`). Options this port lacks must keep diffusers'
    /// defaults (an error names the field otherwise); fields used only by them
    /// (`base_shift`, `max_shift`, `base_image_seq_len`, `max_image_seq_len`,
    /// `time_shift_type`) and bookkeeping (`_diffusers_version`) are ignored.
    pub fn from_diffusers_json(path: &Path) -> crate::Result<Self> {
        let file = ConfigFile::read(path)?;
        file.expect_class(&["FlowMatchEulerDiscreteScheduler"])?;
        file.reject_changed(&[
            ("use_dynamic_shifting", false.into()),
            ("invert_sigmas", false.into()),
            ("shift_terminal", Value::Null),
            ("use_karras_sigmas", false.into()),
            ("use_exponential_sigmas", false.into()),
            ("use_beta_sigmas", false.into()),
            ("stochastic_sampling", false.into()),
        ])?;
        let config = file.overlay(&Self::new(), &["num_train_timesteps", "shift"])?;
        config.validate().map_err(|m| file.error(&m))?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_train_timesteps == 0 {
            return Err("num_train_timesteps must be positive".into());
        }
        if self.shift.is_nan() || self.shift <= 0.0 {
            return Err(format!("shift = {} must be positive", self.shift));
        }
        Ok(())
    }

    /// Builds the scheduler; fails on a bad config.
    pub fn init(&self) -> crate::Result<FlowEulerScheduler> {
        self.validate().map_err(Error::Config)?;
        Ok(FlowEulerScheduler {
            config: self.clone(),
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        })
    }
}

/// A flow-matching Euler scheduler: [`Self::set_timesteps`], then one [`Self::step`] per
/// sigma. Sigmas and timesteps hold float32 values (as diffusers stores them) widened to f64.
#[derive(Debug, Clone)]
pub struct FlowEulerScheduler {
    /// Its settings.
    pub config: FlowEulerConfig,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
}

impl FlowEulerScheduler {
    /// Chooses `n` sigmas and returns the timesteps `T * sigma` fed to the model.
    ///
    /// As diffusers: the unshifted range runs from the largest to the smallest of its
    /// training sigmas (float32, shifted: `shift(1)` and `shift(1 / T)`), times `T`;
    /// `n` points are spaced by numpy's `linspace` (f64), divided by `T`, shifted, rounded to
    /// float32; a terminal sigma 0 is appended.
    pub fn set_timesteps(&mut self, n: usize) -> crate::Result<Vec<f64>> {
        if n == 0 {
            return Err(Error::Input("num_inference_steps must be positive".into()));
        }
        let (t, k) = (self.config.num_train_timesteps as f64, self.config.shift);
        // diffusers' training sigmas are float32: `k s / (1 + (k - 1) s)` with s = i / T.
        let train_sigma = |s: f32| (k as f32) * s / (1.0 + ((k - 1.0) as f32) * s);
        let t32 = t as f32;
        let (hi, lo) = (
            train_sigma(1.0) as f64 * t, // T / T
            train_sigma(1.0 / t32) as f64 * t,
        );
        let step = (lo - hi) / (n.max(2) - 1) as f64;
        let sigmas: Vec<f32> = (0..n)
            .map(|i| {
                let x = if i + 1 == n && n > 1 {
                    lo // numpy sets the endpoint exactly
                } else {
                    i as f64 * step + hi
                };
                shift_sigma(k, x / t) as f32
            })
            .collect();
        self.timesteps = sigmas.iter().map(|&s| (s * t32) as f64).collect();
        self.sigmas = sigmas.iter().map(|&s| s as f64).chain([0.0]).collect();
        Ok(self.timesteps.clone())
    }

    /// The model timesteps of the last [`Self::set_timesteps`] (empty before).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The `n + 1` sigmas of the last [`Self::set_timesteps`], ending at 0 (empty before).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// One Euler step from sigma `i` to sigma `i + 1`: `sample + (sigma_next - sigma) * v`,
    /// the difference taken in float32 as diffusers does.
    ///
    /// # Shapes
    /// - `model_output` (the velocity), `sample`: `[batch, c, h, w]`.
    pub fn step<B: Backend>(
        &self,
        model_output: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
    ) -> crate::Result<Tensor<B, 4>> {
        if i + 1 >= self.sigmas.len() {
            return Err(Error::Input(format!(
                "step {i} of {} flow-matching steps",
                self.timesteps.len()
            )));
        }
        let dt = self.sigmas[i + 1] as f32 - self.sigmas[i] as f32;
        Ok(sample + model_output.mul_scalar(dt as f64))
    }
}

impl Sampler for FlowEulerScheduler {
    fn set_timesteps(&mut self, n: usize) -> crate::Result<()> {
        FlowEulerScheduler::set_timesteps(self, n).map(|_| ())
    }

    fn model_timesteps(&self) -> Vec<f64> {
        self.timesteps.clone()
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
        FlowEulerScheduler::step(self, model_output, i, sample)
    }
}
