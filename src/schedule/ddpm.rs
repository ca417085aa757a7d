//! DDPM with SD's "scaled_linear" betas (diffusers `DDPMScheduler`, training side).

use burn::config::Config;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::betas::{BetaSchedule, alphas_cumprod};
use super::per_sample;
use crate::error::Error;

/// What the denoiser predicts (diffusers `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PredictionType {
    /// `"epsilon"`: the noise (SD 2.1-base, 512 px).
    #[serde(rename = "epsilon")]
    Epsilon,
    /// `"v_prediction"`: `v = sqrt(a) eps - sqrt(1 - a) x0` (SD 2.1, 768 px).
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// `"sample"`: the clean latent `x0` itself.
    #[serde(rename = "sample")]
    Sample,
}

/// DDPM training schedule settings, with diffusers' `scheduler_config.json` names.
#[derive(Config, Debug, PartialEq)]
pub struct DdpmConfig {
    /// Number of discrete training timesteps.
    #[config(default = 1000)]
    pub num_train_timesteps: usize,
    /// First beta (before the square root of "scaled_linear").
    #[config(default = 0.00085)]
    pub beta_start: f64,
    /// Last beta.
    #[config(default = 0.012)]
    pub beta_end: f64,
    /// The prediction target.
    #[config(default = "PredictionType::Epsilon")]
    pub prediction_type: PredictionType,
    /// How betas go from `beta_start` to `beta_end` (Stable Diffusion: `scaled_linear`).
    #[config(default = "BetaSchedule::ScaledLinear")]
    pub beta_schedule: BetaSchedule,
    /// Rescale betas to zero terminal SNR (Lin et al. 2023).
    #[config(default = false)]
    pub rescale_betas_zero_snr: bool,
}

impl DdpmConfig {
    /// SD 2.1 (768 px): v-prediction.
    pub fn sd21() -> Self {
        Self::new().with_prediction_type(PredictionType::VPrediction)
    }

    /// SD 2.1-base (512 px): epsilon prediction.
    pub fn sd21_base() -> Self {
        Self::new()
    }

    /// One line for a run's log: timesteps, betas and target.
    pub fn summary(&self) -> String {
        format!(
            "DDPM, {} timesteps, {:?} betas {}..{}{}, prediction {:?}",
            self.num_train_timesteps,
            self.beta_schedule,
            self.beta_start,
            self.beta_end,
            if self.rescale_betas_zero_snr {
                " rescaled to zero SNR"
            } else {
                ""
            },
            self.prediction_type
        )
    }

    /// Precomputes the cumulative alphas.
    ///
    /// Betas are `linspace(sqrt(beta_start), sqrt(beta_end), T)^2` (`scaled_linear`) or
    /// `linspace(beta_start, beta_end, T)` and `alphas_cumprod = cumprod(1 - beta)`, in
    /// float32 as diffusers computes them.
    pub fn init(&self) -> DdpmSchedule {
        let alphas_cumprod = alphas_cumprod(
            self.num_train_timesteps,
            self.beta_start,
            self.beta_end,
            self.beta_schedule,
            self.rescale_betas_zero_snr,
        );
        DdpmSchedule {
            alphas_cumprod,
            prediction_type: self.prediction_type,
        }
    }
}

/// The precomputed DDPM schedule.
#[derive(Debug, Clone)]
pub struct DdpmSchedule {
    /// `prod_{s <= t} (1 - beta_s)` for each timestep.
    pub alphas_cumprod: Vec<f64>,
    /// The prediction target.
    pub prediction_type: PredictionType,
}

impl DdpmSchedule {
    /// Number of training timesteps `T`.
    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Checks every timestep is below `T`, naming the first that is not.
    pub fn check(&self, timesteps: &[usize]) -> crate::Result<()> {
        let n = self.num_train_timesteps();
        match timesteps.iter().position(|&t| t >= n) {
            Some(i) => Err(Error::Input(format!(
                "timestep[{i}] = {} is out of range 0..{n}",
                timesteps[i]
            ))),
            None => Ok(()),
        }
    }

    fn coefficients(&self, timesteps: &[usize]) -> (Vec<f64>, Vec<f64>) {
        timesteps
            .iter()
            .map(|&t| {
                let a = self.alphas_cumprod[t];
                (a.sqrt(), (1.0 - a).sqrt())
            })
            .unzip()
    }

    /// `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`, one timestep per sample.
    ///
    /// # Shapes
    /// - `x0`, `noise`: `[batch, c, h, w]`; `timesteps`: `batch` values below `T`.
    pub fn add_noise<B: Backend>(
        &self,
        x0: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[usize],
    ) -> crate::Result<Tensor<B, 4>> {
        self.check(timesteps)?;
        let device = x0.device();
        let (sa, sb) = self.coefficients(timesteps);
        Ok(x0 * per_sample::<B>(&sa, &device) + noise * per_sample::<B>(&sb, &device))
    }

    /// The training target: `noise`, `v = sqrt(a_t) noise - sqrt(1 - a_t) x0`, or `x0`.
    pub fn target<B: Backend>(
        &self,
        x0: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[usize],
    ) -> crate::Result<Tensor<B, 4>> {
        self.check(timesteps)?;
        Ok(match self.prediction_type {
            PredictionType::Epsilon => noise,
            PredictionType::Sample => x0,
            PredictionType::VPrediction => {
                let device = x0.device();
                let (sa, sb) = self.coefficients(timesteps);
                noise * per_sample::<B>(&sa, &device) - x0 * per_sample::<B>(&sb, &device)
            }
        })
    }

    /// Signal-to-noise ratio `a_t / (1 - a_t)`.
    pub fn snr(&self, t: usize) -> f64 {
        let a = self.alphas_cumprod[t];
        a / (1.0 - a)
    }

    /// Min-SNR-gamma loss weight (Hang et al. 2023): `min(SNR, gamma) / SNR` for epsilon,
    /// `min(SNR, gamma) / (SNR + 1)` for v-prediction, `min(SNR, gamma)` for `x0` (the
    /// paper's weight of the `x0` loss, which the other two rewrite).
    pub fn min_snr_weight(&self, t: usize, gamma: f64) -> f64 {
        let snr = self.snr(t);
        match self.prediction_type {
            PredictionType::Epsilon => snr.min(gamma) / snr,
            PredictionType::VPrediction => snr.min(gamma) / (snr + 1.0),
            PredictionType::Sample => snr.min(gamma),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closed forms: first and last cumulative alphas of SD's schedule, and the v identity
    /// `v = sqrt(a) eps - sqrt(1-a) x0` at a hand-picked point.
    #[test]
    fn closed_forms() {
        let s = DdpmConfig::sd21().init();
        assert!((s.alphas_cumprod[0] - (1.0 - 0.00085)).abs() < 1e-7);
        assert!(s.alphas_cumprod[999] > 0.0 && s.alphas_cumprod[999] < 0.005);
        let w = s.min_snr_weight(999, 5.0);
        let snr = s.snr(999);
        assert!((w - snr / (snr + 1.0)).abs() < 1e-12);
        let w0 = s.min_snr_weight(0, 5.0);
        assert!((w0 - 5.0 / (s.snr(0) + 1.0)).abs() < 1e-12);
        let x0 = DdpmSchedule {
            prediction_type: PredictionType::Sample,
            ..s.clone()
        };
        assert!((x0.min_snr_weight(999, 5.0) - snr).abs() < 1e-12);
        assert_eq!(x0.min_snr_weight(0, 5.0), 5.0);
        assert!(s.check(&[0, 999]).is_ok());
        let err = s.check(&[3, 1000]).unwrap_err().to_string();
        assert!(
            err.contains("timestep[1] = 1000 is out of range 0..1000"),
            "{err}"
        );
    }
}
