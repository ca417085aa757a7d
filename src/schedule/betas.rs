//! The beta schedules shared by the DDPM (training) and DDIM (inference) schedules, computed
//! with PyTorch's float32 arithmetic so the cumulative alphas equal diffusers' bit for bit.
//!
//! Ports the `betas` / `alphas_cumprod` part of diffusers' `DDPMScheduler.__init__` /
//! `DDIMScheduler.__init__` and `rescale_zero_terminal_snr` (Lin et al. 2023, Algorithm 1).

use serde::{Deserialize, Serialize};

/// How betas go from `beta_start` to `beta_end` (diffusers `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BetaSchedule {
    /// `"linear"`: `linspace(beta_start, beta_end, T)`.
    #[serde(rename = "linear")]
    Linear,
    /// `"scaled_linear"`: `linspace(sqrt(beta_start), sqrt(beta_end), T)^2` (Stable Diffusion).
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
}

/// `torch.linspace(start, end, n, dtype=float32)`: PyTorch's CPU kernel fills the first half
/// forwards from `start` and the second half backwards from `end` with a float32 step, each
/// value a fused multiply-add (reproduced here by one f64 evaluation rounded once).
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n <= 1 {
        return vec![start; n];
    }
    let step = (end - start) / (n - 1) as f32;
    let (s, e, st) = (start as f64, end as f64, step as f64);
    (0..n)
        .map(|i| {
            if i < n / 2 {
                (s + st * i as f64) as f32
            } else {
                (e - st * (n - 1 - i) as f64) as f32
            }
        })
        .collect()
}

/// `torch.cumprod` of float32 values: accumulated in f64 (PyTorch's CPU accumulation type),
/// each prefix rounded to f32.
fn cumprod_f32(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// Rescales betas to zero terminal SNR (diffusers `rescale_zero_terminal_snr`), in f32: shift
/// and scale `sqrt(alphas_cumprod)` so the last is exactly 0 and the first unchanged.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let sqrt: Vec<f32> = cumprod_f32(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt[0], sqrt[sqrt.len() - 1]);
    let scale = first / (first - last);
    let bar: Vec<f32> = sqrt.iter().map(|s| ((s - last) * scale).powi(2)).collect();
    (0..bar.len())
        .map(|i| 1.0 - if i == 0 { bar[0] } else { bar[i] / bar[i - 1] })
        .collect()
}

/// `alphas_cumprod = cumprod(1 - betas)` as diffusers computes it (float32), widened to f64.
///
pub(crate) fn alphas_cumprod(
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
    schedule: BetaSchedule,
    rescale_zero_snr: bool,
) -> Vec<f64> {
    let n = num_train_timesteps;
    let mut betas = match schedule {
        BetaSchedule::Linear => linspace_f32(beta_start as f32, beta_end as f32, n),
        BetaSchedule::ScaledLinear => {
            let roots = linspace_f32(beta_start.sqrt() as f32, beta_end.sqrt() as f32, n);
            roots.iter().map(|r| r * r).collect()
        }
    };
    if rescale_zero_snr && n > 1 {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    cumprod_f32(&alphas).into_iter().map(f64::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closed forms: linspace hits both ends exactly and is symmetric in its step; zero SNR
    /// ends at exactly 0 and keeps the first alpha.
    #[test]
    fn ends_and_zero_snr() {
        let l = linspace_f32(0.1, 0.9, 5);
        assert_eq!((l[0], l[4]), (0.1, 0.9));
        assert!((l[2] - 0.5).abs() < 1e-7);
        let plain = alphas_cumprod(1000, 0.00085, 0.012, BetaSchedule::ScaledLinear, false);
        let zero = alphas_cumprod(1000, 0.00085, 0.012, BetaSchedule::ScaledLinear, true);
        assert_eq!(zero[999], 0.0);
        assert!((zero[0] - plain[0]).abs() < 1e-7);
        assert!(plain[999] > 0.004);
        let lin = alphas_cumprod(1000, 0.0001, 0.02, BetaSchedule::Linear, false);
        assert!((lin[0] - 0.9999).abs() < 1e-7);
        assert!((lin[1] - 0.9999 * (1.0 - 0.000_119_92)).abs() < 1e-7);
    }
}
