//! The VAE mid block's self-attention: diffusers' `Attention` as `UNetMidBlock2D` builds it
//! (`_from_deprecated_attn_block`): a group norm, one head over all channels, biased
//! projections, a residual connection and `rescale_output_factor` 1.
//!
//! It attends over every pixel of the deepest level: 4096 tokens for a 512x512 image, 16384
//! for 1024x1024, where one score matrix would be 1 GiB per image in f32. The queries are
//! therefore processed in chunks whose score block holds at most [`MAX_SCORES`] elements, with
//! the softmax materialised per chunk: exact, the same on every backend, and under autodiff the
//! graph keeps only the chunks. (burn's fused `attention` would avoid the score matrix on GPU
//! backends, but falls back to the full matrix on ndarray and under autodiff.) The hook-based
//! attention of the denoisers is not used: the VAE has nothing to record.

use burn::module::Module;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::tensor::{DType, Tensor, backend::Backend};

use super::norm::group_norm;
use crate::attention::chunked;

/// The largest score block (`batch * query_chunk * keys` elements) computed at once: 16 Mi
/// elements, 64 MiB in f32.
pub const MAX_SCORES: usize = 1 << 24;

/// Single-head self-attention over the pixels of `[b, c, h, w]`, with a residual connection.
/// Field names are diffusers' current keys (`to_q`, `to_k`, `to_v`, `to_out.0`); checkpoints
/// with the older `query`/`key`/`value`/`proj_attn` names are renamed by the loader
/// ([`crate::weights::keys::legacy_attention_key`]).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Group norm of the input (eps 1e-6).
    pub group_norm: GroupNorm<B>,
    /// Query projection.
    pub to_q: Linear<B>,
    /// Key projection.
    pub to_k: Linear<B>,
    /// Value projection.
    pub to_v: Linear<B>,
    /// Output projection (`to_out.0`; diffusers' `to_out.1` is a parameter-free dropout).
    pub to_out: Vec<Linear<B>>,
}

impl<B: Backend> Attention<B> {
    /// Builds the layer for `channels` channels.
    pub fn new(channels: usize, groups: usize, device: &B::Device) -> Self {
        let linear = || LinearConfig::new(channels, channels).init(device);
        Self {
            group_norm: group_norm(groups, channels, device),
            to_q: linear(),
            to_k: linear(),
            to_v: linear(),
            to_out: vec![linear()],
        }
    }

    /// `x + to_out(softmax(q k^T / sqrt(c)) v)` with `q, k, v` projections of the normed pixels.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`; returns the same shape
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        // 1. Norm, then pixels as tokens: [b, h*w, c].
        let tokens = self
            .group_norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        // 2. Projections and attention.
        let q = self.to_q.forward(tokens.clone());
        let k = self.to_k.forward(tokens.clone());
        let v = self.to_v.forward(tokens);
        let mut out = attend_chunked(q, k, v, MAX_SCORES);
        // 3. Output projection, back to an image, residual.
        for layer in &self.to_out {
            out = layer.forward(out);
        }
        out.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}

/// `softmax(q k^T / sqrt(d)) v` for `[b, n, d]` inputs, with the queries split into chunks whose
/// score block `[b, chunk, n_keys]` holds at most `max_scores` elements (at least one query per
/// chunk): the crate's query-chunked attention ([`crate::attention::chunked::forward`]) with
/// one head. Half-precision inputs are computed in f32 (diffusers upcasts this softmax).
pub(crate) fn attend_chunked<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    max_scores: usize,
) -> Tensor<B, 3> {
    let [b, _, d] = q.dims();
    let keys = k.dims()[1];
    let chunk = (max_scores / (b * keys).max(1)).max(1);
    let dtype = q.dtype();
    let half = matches!(dtype, DType::F16 | DType::BF16);
    let prep = |t: Tensor<B, 3>| {
        let t = t.unsqueeze_dim::<4>(1);
        if half { t.cast(DType::F32) } else { t }
    };
    let scale = (d as f64).powf(-0.5);
    let (out, _) = chunked::forward(prep(q), prep(k), prep(v), scale, chunk);
    let out = out.squeeze_dim::<3>(1);
    if half { out.cast(dtype) } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::Distribution;

    /// Chunked attention equals the closed form computed row by row on the host, for chunk
    /// sizes that divide the queries, that leave a remainder, and of one query.
    #[test]
    fn chunks_match_the_closed_form() {
        let device = Default::default();
        let [b, n, m, d] = [2, 7, 5, 3];
        let rand = |s: [usize; 3]| {
            Tensor::<TestBackend, 3>::random(s, Distribution::Normal(0.0, 1.0), &device)
        };
        let (q, k, v) = (rand([b, n, d]), rand([b, m, d]), rand([b, m, d]));
        let host = |t: &Tensor<TestBackend, 3>| t.to_data().to_vec::<f64>().unwrap();
        let (qh, kh, vh) = (host(&q), host(&k), host(&v));
        let mut want = vec![0.0; b * n * d];
        for bi in 0..b {
            for i in 0..n {
                let s: Vec<f64> = (0..m)
                    .map(|j| {
                        (0..d)
                            .map(|e| qh[(bi * n + i) * d + e] * kh[(bi * m + j) * d + e])
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let top = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - top).exp()).sum();
                for e in 0..d {
                    want[(bi * n + i) * d + e] = (0..m)
                        .map(|j| (s[j] - top).exp() / z * vh[(bi * m + j) * d + e])
                        .sum();
                }
            }
        }
        for max_scores in [1, b * m * 2, b * m * 3, usize::MAX / 2] {
            let got = attend_chunked(q.clone(), k.clone(), v.clone(), max_scores);
            let got = got.into_data().to_vec::<f64>().unwrap();
            let err = got
                .iter()
                .zip(&want)
                .fold(0f64, |e, (a, b)| e.max((a - b).abs()));
            assert!(err < 1e-12, "max_scores {max_scores}: error {err}");
        }
    }
}
