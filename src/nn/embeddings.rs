//! Sinusoidal timestep features and the MLP that embeds them (diffusers `embeddings.py`:
//! `get_timestep_embedding`, `Timesteps`, `TimestepEmbedding`).

use crate::nn::silu;
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

/// Sinusoidal features of (possibly fractional) timesteps, as diffusers'
/// `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift)` with `scale = 1`
/// and `max_period = 10000`.
///
/// # Shapes
/// - `timesteps`: `[batch]`
/// - returns `[batch, dim]`
pub fn timestep_embedding<B: Backend>(
    timesteps: Tensor<B, 1>,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let device = timesteps.device();
    let max_period: f64 = 10_000.0;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(max_period.ln()) * i as f64 / (half as f64 - freq_shift)).exp() as f32)
        .collect();
    let freqs = Tensor::<B, 1>::from_floats(freqs.as_slice(), &device).unsqueeze_dim::<2>(0);
    let args = timesteps.unsqueeze_dim::<2>(1).matmul(freqs);
    let (sin, cos) = (args.clone().sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        let batch = emb.dims()[0];
        Tensor::cat(vec![emb, Tensor::zeros([batch, 1], &device)], 1)
    } else {
        emb
    }
}

/// Configuration of [`TimestepEmbedding`].
#[derive(Config, Debug)]
pub struct TimestepEmbeddingConfig {
    /// Width of the sinusoidal features (`in_channels`).
    pub in_channels: usize,
    /// Width of the embedding (`time_embed_dim`).
    pub time_embed_dim: usize,
}

/// `linear_1 -> SiLU -> linear_2`, diffusers' `TimestepEmbedding` (also used for pooled text).
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    /// First projection.
    pub linear_1: Linear<B>,
    /// Second projection.
    pub linear_2: Linear<B>,
}

impl TimestepEmbeddingConfig {
    /// Builds the layer.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TimestepEmbedding<B> {
        TimestepEmbedding {
            linear_1: LinearConfig::new(self.in_channels, self.time_embed_dim).init(device),
            linear_2: LinearConfig::new(self.time_embed_dim, self.time_embed_dim).init(device),
        }
    }
}

impl<B: Backend> TimestepEmbedding<B> {
    /// # Shapes
    /// - `x`: `[batch, in_channels]`, returns `[batch, time_embed_dim]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    /// Closed form: t * 10000^(-i / (half - shift)), sin half first unless flipped.
    #[test]
    fn matches_closed_form() {
        let device = Default::default();
        let t = Tensor::<TestBackend, 1>::from_floats([0.0, 3.0, 999.0], &device);
        for (flip, shift) in [(true, 0.0), (false, 1.0)] {
            let emb = timestep_embedding(t.clone(), 6, flip, shift);
            let got = emb.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            for (row, tv) in [0.0f64, 3.0, 999.0].iter().enumerate() {
                for i in 0..3 {
                    let f = (-(10_000f64.ln()) * i as f64 / (3.0 - shift)).exp();
                    let (s, c) = ((tv * f).sin(), (tv * f).cos());
                    let (first, second) = if flip { (c, s) } else { (s, c) };
                    assert!((got[row * 6 + i] as f64 - first).abs() < 1e-4);
                    assert!((got[row * 6 + 3 + i] as f64 - second).abs() < 1e-4);
                }
            }
        }
    }
}
