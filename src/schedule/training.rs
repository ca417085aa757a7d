//! [`Schedule`]: the noise process a denoiser is trained with, seen by a training step
//! through levels (DDPM timesteps or flow sigmas), one per sample.

use burn::tensor::{Tensor, backend::Backend};
use rand::Rng;

use super::{DdimConfig, DdpmConfig, DdpmSchedule, FlowConfig, FlowEulerConfig, FlowSchedule};
use crate::error::{Error, Result};

/// The noise process a model is trained with.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// SD 2.1's DDPM; levels are integer timesteps `0..T`.
    Ddpm(DdpmSchedule),
    /// SD 3's rectified flow; levels are sigmas in `[0, 1]`.
    Flow(FlowSchedule),
}

impl Schedule {
    /// One draw of the level a sample is trained at: a uniform timestep in `0..T` (DDPM,
    /// diffusers' `torch.randint`), or a sigma from the flow's density (SD 3's logit-normal with
    /// the timestep shift).
    pub fn sample_level<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match self {
            Schedule::Ddpm(s) => rng.random_range(0..s.num_train_timesteps()) as f64,
            Schedule::Flow(s) => s.sample_sigma(rng),
        }
    }

    /// `n` draws of [`Self::sample_level`]: the levels of a plain fine-tuning batch.
    pub fn sample_levels<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.sample_level(rng)).collect()
    }

    /// One draw of the training distribution conditioned to lie below `level`: a uniform
    /// timestep in `0..level` (DDPM; 0 when `level` is 0), or `F^-1(u F(level))` for a flow
    /// sigma ([`FlowSchedule::sample_sigma_below`]).
    pub fn sample_level_below<R: Rng + ?Sized>(&self, level: f64, rng: &mut R) -> f64 {
        match self {
            Schedule::Ddpm(_) if level < 1.0 => 0.0,
            Schedule::Ddpm(_) => rng.random_range(0..level as usize) as f64,
            Schedule::Flow(s) => s.sample_sigma_below(level, rng),
        }
    }

    /// The level that `timestep` (a DDPM step out of the schedule's `T`) stands for: the step
    /// itself, or `timestep / T` as a flow sigma.
    pub fn level_of_timestep(&self, timestep: usize) -> f64 {
        match self {
            Schedule::Ddpm(_) => timestep as f64,
            Schedule::Flow(s) => timestep as f64 / s.config.num_train_timesteps as f64,
        }
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

/// A pipeline's training schedule, read from its sampler's `scheduler_config.json` as
/// diffusers' training scripts read theirs.
impl DdpmConfig {
    /// The training schedule of a pipeline whose `scheduler/scheduler_config.json` reads as
    /// `sampler` (diffusers' training scripts build their `DDPMScheduler` from that file): its
    /// timesteps, betas and prediction type.
    pub fn from_sampler(sampler: &DdimConfig) -> Self {
        Self::new()
            .with_num_train_timesteps(sampler.num_train_timesteps)
            .with_beta_start(sampler.beta_start)
            .with_beta_end(sampler.beta_end)
            .with_beta_schedule(sampler.beta_schedule)
            .with_rescale_betas_zero_snr(sampler.rescale_betas_zero_snr)
            .with_prediction_type(sampler.prediction_type)
    }
}

impl FlowConfig {
    /// The training schedule of a pipeline whose `scheduler/scheduler_config.json` reads as
    /// `sampler`: its shift and timesteps, with SD 3's logit-normal(0, 1) density.
    pub fn from_sampler(sampler: &FlowEulerConfig) -> Self {
        Self::new()
            .with_shift(sampler.shift)
            .with_num_train_timesteps(sampler.num_train_timesteps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{BetaSchedule, PredictionType};

    /// A pipeline's scheduler file decides the training target and betas: each
    /// `prediction_type` value of a `scheduler_config.json` is the one trained, and the betas
    /// give DDIM's own cumulative alphas (also for `linear` betas and zero-SNR rescaling).
    #[test]
    fn the_pipelines_scheduler_file_sets_prediction_and_betas() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let shipped = root.join("weights/tiny-sd21/scheduler/scheduler_config.json");
        let text = std::fs::read_to_string(&shipped).unwrap();
        let sampler = DdimConfig::from_diffusers_json(&shipped).unwrap();
        let from_file = DdpmConfig::from_sampler(&sampler);
        assert_eq!(from_file, DdpmConfig::sd21());
        let dir = std::env::temp_dir().join(format!("ctcal-sched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("scheduler_config.json");
        for (value, expected) in [
            ("epsilon", PredictionType::Epsilon),
            ("v_prediction", PredictionType::VPrediction),
            ("sample", PredictionType::Sample),
        ] {
            let edited = text
                .replace("\"v_prediction\"", &format!("\"{value}\""))
                .replace("\"scaled_linear\"", "\"linear\"")
                .replace(
                    "\"rescale_betas_zero_snr\": false",
                    "\"rescale_betas_zero_snr\": true",
                );
            std::fs::write(&path, edited).unwrap();
            let sampler = DdimConfig::from_diffusers_json(&path).unwrap();
            let config = DdpmConfig::from_sampler(&sampler);
            assert_eq!(config.prediction_type, expected, "{value}");
            assert_eq!(config.beta_schedule, BetaSchedule::Linear);
            let training = config.init().alphas_cumprod;
            assert_eq!(training, sampler.init().unwrap().alphas_cumprod);
            assert_ne!(training, DdpmConfig::sd21().init().alphas_cumprod);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_pipelines_scheduler_file_sets_the_shift() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = root.join("weights/tiny-sd3/scheduler/scheduler_config.json");
        let sampler = FlowEulerConfig::from_diffusers_json(&path).unwrap();
        let config = FlowConfig::from_sampler(&sampler);
        assert_eq!((config.shift, config.num_train_timesteps), (3.0, 1000));
        let sampler = FlowEulerConfig::new()
            .with_shift(1.5)
            .with_num_train_timesteps(500);
        let config = FlowConfig::from_sampler(&sampler);
        assert_eq!((config.shift, config.num_train_timesteps), (1.5, 500));
        assert_eq!((config.logit_mean, config.logit_std), (0.0, 1.0));
    }
}
