//! Rectified flow for SD 3 (diffusers `FlowMatchEulerDiscreteScheduler`, training side).

use burn::config::Config;
use burn::tensor::{Tensor, backend::Backend};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use statrs::distribution::{ContinuousCDF, Normal};

use super::per_sample;
use crate::error::Error;

/// The timestep shift `k s / (1 + (k - 1) s)` of diffusers' flow-matching schedulers (their
/// `shift`; SD 3 trains and samples with `k = 3`), in diffusers' order of operations.
pub(crate) fn shift_sigma(k: f64, s: f64) -> f64 {
    k * s / (1.0 + (k - 1.0) * s)
}

/// The inverse of [`shift_sigma`] for `k > 0`: `s / (k - (k - 1) s)`.
fn unshift_sigma(k: f64, s: f64) -> f64 {
    s / (k - (k - 1.0) * s)
}

/// Flow-matching training settings.
#[derive(Config, Debug, PartialEq)]
pub struct FlowConfig {
    /// Timestep shift (3.0 for SD3-medium).
    #[config(default = 3.0)]
    pub shift: f64,
    /// Mean of the logit-normal sigma density.
    #[config(default = 0.0)]
    pub logit_mean: f64,
    /// Standard deviation of the logit-normal sigma density.
    #[config(default = 1.0)]
    pub logit_std: f64,
    /// Timesteps fed to the model are `num_train_timesteps * sigma`.
    #[config(default = 1000)]
    pub num_train_timesteps: usize,
}

impl FlowConfig {
    /// SD3-medium's `scheduler_config.json` (shift 3.0).
    pub fn sd3_medium() -> Self {
        Self::new()
    }

    /// One line for a run's log: the sigma density and the shift.
    pub fn summary(&self) -> String {
        format!(
            "rectified flow, logit-normal({}, {}) sigmas, shift {}, {} timesteps",
            self.logit_mean, self.logit_std, self.shift, self.num_train_timesteps
        )
    }

    /// Builds the schedule.
    pub fn init(&self) -> FlowSchedule {
        FlowSchedule {
            config: self.clone(),
        }
    }
}

/// The flow-matching training schedule.
#[derive(Debug, Clone)]
pub struct FlowSchedule {
    /// Its settings.
    pub config: FlowConfig,
}

impl FlowSchedule {
    /// `shift * s / (1 + (shift - 1) * s)`.
    pub fn shift(&self, s: f64) -> f64 {
        shift_sigma(self.config.shift, s)
    }

    /// Draws a shifted sigma: `s = sigmoid(N(mean, std))`, then [`Self::shift`].
    pub fn sample_sigma<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        let z: f64 = StandardNormal.sample(rng);
        let u = self.config.logit_mean + self.config.logit_std * z;
        self.shift(1.0 / (1.0 + (-u).exp()))
    }

    /// The training density's CDF `F(sigma) = P(draw <= sigma)`: the shift is increasing, so
    /// `F(sigma) = Phi((logit(unshift(sigma)) - mean) / std)`.
    pub fn cdf(&self, sigma: f64) -> f64 {
        if sigma <= 0.0 {
            return 0.0;
        }
        if sigma >= 1.0 {
            return 1.0;
        }
        let s = unshift_sigma(self.config.shift, sigma);
        let logit = (s / (1.0 - s)).ln();
        standard_normal().cdf((logit - self.config.logit_mean) / self.config.logit_std)
    }

    /// The inverse of [`Self::cdf`]: the sigma below which a share `p` of the draws falls.
    pub fn quantile(&self, p: f64) -> f64 {
        if p <= 0.0 {
            return 0.0;
        }
        if p >= 1.0 {
            return 1.0;
        }
        let u = self.config.logit_mean + self.config.logit_std * standard_normal().inverse_cdf(p);
        self.shift(1.0 / (1.0 + (-u).exp()))
    }

    /// A draw from the training density conditioned to lie below `sigma`:
    /// `F^-1(u F(sigma))`, `u` uniform (CTCal's teacher level under a student at `sigma`).
    pub fn sample_sigma_below<R: Rng + ?Sized>(&self, sigma: f64, rng: &mut R) -> f64 {
        let u: f64 = rng.random();
        self.quantile(u * self.cdf(sigma)).min(sigma)
    }

    /// The timestep value the model is fed for `sigma`.
    pub fn timestep(&self, sigma: f64) -> f64 {
        sigma * self.config.num_train_timesteps as f64
    }

    /// Checks every sigma lies in `[0, 1]`.
    pub fn check(&self, sigmas: &[f64]) -> crate::Result<()> {
        match sigmas.iter().position(|s| !(0.0..=1.0).contains(s)) {
            Some(i) => Err(Error::Input(format!(
                "sigma[{i}] = {} is out of range [0, 1]",
                sigmas[i]
            ))),
            None => Ok(()),
        }
    }

    /// `x_s = (1 - s) x0 + s noise`, one sigma per sample.
    pub fn add_noise<B: Backend>(
        &self,
        x0: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        sigmas: &[f64],
    ) -> crate::Result<Tensor<B, 4>> {
        self.check(sigmas)?;
        let device = x0.device();
        let keep: Vec<f64> = sigmas.iter().map(|s| 1.0 - s).collect();
        Ok(x0 * per_sample::<B>(&keep, &device) + noise * per_sample::<B>(sigmas, &device))
    }

    /// The velocity target `noise - x0`.
    pub fn target<B: Backend>(&self, x0: Tensor<B, 4>, noise: Tensor<B, 4>) -> Tensor<B, 4> {
        noise - x0
    }
}

/// `N(0, 1)`, for the CDF and its inverse.
fn standard_normal() -> Normal {
    Normal::standard()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shift_closed_form_and_sampling_range() {
        let s = FlowConfig::sd3_medium().init();
        assert_eq!(s.shift(0.0), 0.0);
        assert_eq!(s.shift(1.0), 1.0);
        assert!((s.shift(0.5) - 0.75).abs() < 1e-12); // 3*0.5 / (1 + 2*0.5)
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let draws: Vec<f64> = (0..2000).map(|_| s.sample_sigma(&mut rng)).collect();
        assert!(draws.iter().all(|x| (0.0..=1.0).contains(x)));
        // Median of sigmoid(N(0,1)) is 0.5, shifted to 0.75.
        let mut sorted = draws.clone();
        sorted.sort_by(f64::total_cmp);
        assert!(
            (sorted[1000] - 0.75).abs() < 0.03,
            "median {}",
            sorted[1000]
        );
        assert!(
            s.check(&[0.2, 1.5])
                .unwrap_err()
                .to_string()
                .contains("sigma[1] = 1.5")
        );
    }

    #[test]
    fn cdf_is_the_samplers_and_quantile_inverts_it() {
        for shift in [1.0, 3.0] {
            let s = FlowConfig::new().with_shift(shift).init();
            // Closed form at the median: sigmoid(0) = 0.5 shifted.
            assert!((s.cdf(s.shift(0.5)) - 0.5).abs() < 1e-12);
            for p in [1e-9, 0.01, 0.3, 0.5, 0.77, 0.999] {
                let q = s.quantile(p);
                assert!(
                    (s.cdf(q) - p).abs() < 1e-9 * p.max(1e-3),
                    "shift {shift} p {p}"
                );
            }
            // The sampler's empirical CDF against `cdf` (one-sample Kolmogorov-Smirnov,
            // critical value 1.95 / sqrt(n) at alpha = 0.001).
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let n = 20_000;
            let mut draws: Vec<f64> = (0..n).map(|_| s.sample_sigma(&mut rng)).collect();
            draws.sort_by(f64::total_cmp);
            let d = draws
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let f = s.cdf(x);
                    (f - i as f64 / n as f64).max((i + 1) as f64 / n as f64 - f)
                })
                .fold(0.0, f64::max);
            assert!(
                d < 1.95 / (n as f64).sqrt(),
                "shift {shift}: KS distance {d}"
            );
        }
    }
}
