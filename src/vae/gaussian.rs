//! [`DiagonalGaussian`]: the encoder's posterior (diffusers `DiagonalGaussianDistribution`).

use crate::nn::normal_tensor;
use burn::tensor::{Tensor, backend::Backend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// The range diffusers clamps the log-variance to.
pub const LOGVAR_RANGE: (f64, f64) = (-30.0, 20.0);

/// A Gaussian with independent components: the VAE encoder's posterior over latents.
///
/// # Shapes
/// - `mean`, `logvar`: `[batch, latent_channels, h, w]`
#[derive(Debug, Clone)]
pub struct DiagonalGaussian<B: Backend> {
    /// The mean (the first half of the encoder's moments).
    pub mean: Tensor<B, 4>,
    /// The log-variance (the second half), clamped to [`LOGVAR_RANGE`].
    pub logvar: Tensor<B, 4>,
}

impl<B: Backend> DiagonalGaussian<B> {
    /// Splits `moments` `[b, 2c, h, w]` into mean and log-variance along the channels and
    /// clamps the log-variance, as diffusers does.
    pub fn from_moments(moments: Tensor<B, 4>) -> Self {
        let [b, c2, h, w] = moments.dims();
        let c = c2 / 2;
        let mean = moments.clone().slice([0..b, 0..c, 0..h, 0..w]);
        let logvar = moments
            .slice([0..b, c..c2, 0..h, 0..w])
            .clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1);
        Self { mean, logvar }
    }

    /// The standard deviation `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<B, 4> {
        self.logvar.clone().mul_scalar(0.5).exp()
    }

    /// The most likely latent: the mean (diffusers `latent_dist.mode()`).
    pub fn mode(&self) -> Tensor<B, 4> {
        self.mean.clone()
    }

    /// `mean + std * eps` for given standard-normal noise `eps` of the mean's shape.
    pub fn sample_with_noise(&self, eps: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        if eps.dims() != self.mean.dims() {
            return Err(Error::Input(format!(
                "posterior noise has shape {:?}, the latent is {:?}",
                eps.dims(),
                self.mean.dims()
            )));
        }
        Ok(self.mean.clone() + self.std() * eps)
    }

    /// A sample with noise drawn (on the host, f32) from `rng`: the same on every backend for
    /// the same rng state. Torch's generator differs, so it does not reproduce diffusers'
    /// `latent_dist.sample(generator)` draw for draw.
    pub fn sample_with_rng(&self, rng: &mut impl Rng) -> Tensor<B, 4> {
        let eps = normal_tensor(rng, self.mean.dims(), &self.mean.device());
        self.mean.clone() + self.std() * eps
    }

    /// A sample with noise from a [`StdRng`] seeded with `seed`.
    pub fn sample(&self, seed: u64) -> Tensor<B, 4> {
        self.sample_with_rng(&mut StdRng::seed_from_u64(seed))
    }

    /// `KL(self || N(0, I))` per batch element, summed over the latent:
    /// `0.5 * sum(mean^2 + var - 1 - logvar)` (diffusers `kl()`).
    pub fn kl(&self) -> Tensor<B, 1> {
        let [b, ..] = self.mean.dims();
        let var = self.logvar.clone().exp();
        (self.mean.clone().powi_scalar(2) + var - self.logvar.clone())
            .sub_scalar(1.0)
            .mul_scalar(0.5)
            .reshape([b as i32, -1])
            .sum_dim(1)
            .reshape([b])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::TensorData;

    type T = Tensor<TestBackend, 4>;

    fn host(t: T) -> Vec<f64> {
        t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
    }

    /// Moments split along the channels; the log-variance clamped to [-30, 20].
    fn posterior() -> DiagonalGaussian<TestBackend> {
        let device = Default::default();
        // [1, 4, 1, 2]: mean channels 0-1, logvar channels 2-3 (one below, one above the range).
        let values = vec![0.5, -1.0, 2.0, 0.0, -40.0, 0.4, 25.0, -2.0];
        let moments = T::from_data(TensorData::new(values, [1, 4, 1, 2]), &device);
        DiagonalGaussian::from_moments(moments)
    }

    #[test]
    fn splits_and_clamps() {
        let p = posterior();
        assert_eq!(host(p.mode()), vec![0.5, -1.0, 2.0, 0.0]);
        assert_eq!(host(p.logvar.clone()), vec![-30.0, 0.4, 20.0, -2.0]);
        let kl = p.kl().into_data().to_vec::<f64>().unwrap()[0];
        let want: f64 = [(0.5, -30.0), (-1.0, 0.4), (2.0, 20.0), (0.0, -2.0)]
            .iter()
            .map(|&(m, l): &(f64, f64)| 0.5 * (m * m + l.exp() - 1.0 - l))
            .sum();
        assert!((kl - want).abs() < 1e-9 * want.abs(), "{kl} vs {want}");
    }

    /// With the noise fixed, a sample is the closed form `mean + exp(logvar / 2) * eps`.
    #[test]
    fn fixed_noise_sample_is_the_closed_form() {
        let p = posterior();
        let eps = [0.3, -1.2, 2.0, 0.7];
        let t = T::from_data(
            TensorData::new(eps.to_vec(), [1, 2, 1, 2]),
            &Default::default(),
        );
        let got = host(p.sample_with_noise(t).unwrap());
        let (mean, logvar) = (host(p.mode()), host(p.logvar.clone()));
        for i in 0..4 {
            let want = mean[i] + (0.5 * logvar[i]).exp() * eps[i];
            assert!((got[i] - want).abs() < 1e-12 * want.abs().max(1.0), "{i}");
        }
        let wrong = T::zeros([1, 2, 2, 1], &Default::default());
        let err = p.sample_with_noise(wrong).unwrap_err().to_string();
        assert!(err.contains("[1, 2, 2, 1]"), "{err}");
    }

    /// Seeded samples repeat, differ between seeds, and standardise (`(s - mean) / std`) to
    /// noise with mean ~0 and variance ~1 over 2^14 components of a varied posterior.
    #[test]
    fn seeded_samples_have_the_posterior_statistics() {
        let device = Default::default();
        let shape = [2, 4, 32, 32];
        let n: usize = shape.iter().product();
        let mean: Vec<f64> = (0..n).map(|i| ((i % 17) as f64 - 8.0) * 0.3).collect();
        let logvar: Vec<f64> = (0..n).map(|i| ((i % 11) as f64 - 5.0) * 0.4).collect();
        let p = DiagonalGaussian::<TestBackend> {
            mean: T::from_data(TensorData::new(mean.clone(), shape), &device),
            logvar: T::from_data(TensorData::new(logvar.clone(), shape), &device),
        };
        let a = host(p.sample(7));
        assert_eq!(a, host(p.sample(7)));
        assert_ne!(a, host(p.sample(8)));
        let z: Vec<f64> = (0..n)
            .map(|i| (a[i] - mean[i]) / (0.5 * logvar[i]).exp())
            .collect();
        let m = z.iter().sum::<f64>() / n as f64;
        let v = z.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
        // Standard errors: 1/sqrt(n) = 0.0078 for the mean, sqrt(2/n) = 0.011 for the variance.
        assert!(m.abs() < 0.04, "mean {m}");
        assert!((v - 1.0).abs() < 0.06, "variance {v}");
    }
}
