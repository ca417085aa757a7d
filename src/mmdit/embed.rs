//! The MMDiT's input embeddings (diffusers `embeddings.py`): patches with a cropped 2D sin-cos
//! position table (`PatchEmbed`), and timestep plus pooled text (`CombinedTimestepTextProjEmbeddings`).

use crate::backend::KernelBackend;
use burn::module::{Module, Param, ParamId};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{FloatDType, Tensor, TensorData, backend::Backend};

use crate::nn::{TimestepEmbedding, TimestepEmbeddingConfig, conv2d, timestep_embedding};

/// Patchify convolution plus the position table, cropped to each input's patch grid.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// `patch_size` x `patch_size` convolution with stride `patch_size`.
    pub proj: Conv2d<B>,
    /// The `[1, max * max, width]` table (a persistent buffer in diffusers, so it is in every
    /// checkpoint): loaded, never trained.
    pub pos_embed: Param<Tensor<B, 3>>,
    /// Side of the patches.
    pub patch_size: usize,
    /// Side of the table in patches (`pos_embed_max_size`).
    pub max_size: usize,
}

impl<B: Backend> PatchEmbed<B> {
    /// Builds the layer with the table diffusers computes for these sizes.
    pub fn new(
        in_channels: usize,
        width: usize,
        patch_size: usize,
        max_size: usize,
        base_size: usize,
        device: &B::Device,
    ) -> Self {
        let proj = Conv2dConfig::new([in_channels, width], [patch_size, patch_size])
            .with_stride([patch_size, patch_size])
            .with_padding(PaddingConfig2d::Valid)
            .init(device);
        // Lazy, like burn's own parameters: a checkpoint overwrites it without computing it.
        let shape = [1, max_size * max_size, width];
        let init = move |device: &B::Device, require_grad: bool| {
            let table = sincos_table(width, max_size, base_size);
            Tensor::from_data(TensorData::new(table, shape), device).set_require_grad(require_grad)
        };
        PatchEmbed {
            proj,
            pos_embed: Param::uninitialized(
                ParamId::new(),
                init,
                device.clone(),
                false,
                shape.into(),
            ),
            patch_size,
            max_size,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, c, h * p, w * p]` with `h, w <= max_size`
    /// - returns `[batch, h * w, width]` (row-major patch order)
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3>
    where
        B: KernelBackend,
    {
        let patches = conv2d(&self.proj, x);
        let [b, d, h, w] = patches.dims();
        let tokens = patches.reshape([b, d, h * w]).swap_dims(1, 2);
        tokens + self.cropped_table(h, w)
    }

    /// The centred `h` x `w` window of the table, as diffusers' `cropped_pos_embed`.
    fn cropped_table(&self, h: usize, w: usize) -> Tensor<B, 3> {
        let m = self.max_size;
        let d = self.pos_embed.dims()[2];
        let (top, left) = ((m - h) / 2, (m - w) / 2);
        self.pos_embed
            .val()
            .reshape([m, m, d])
            .slice([top..top + h, left..left + w])
            .reshape([1, h * w, d])
    }
}

/// diffusers' `get_2d_sincos_pos_embed(width, max_size, base_size)`: row `r * max + c` holds
/// `[sin(x w), cos(x w), sin(y w), cos(y w)]` with `x = c * base / max`, `y = r * base / max`
/// (column first) and `w_j = 10000^(-j / (width / 4))`.
pub fn sincos_table(width: usize, max_size: usize, base_size: usize) -> Vec<f32> {
    let quarter = width / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|j| 1.0 / 10_000f64.powf(j as f64 / quarter as f64))
        .collect();
    // Positions are computed in f32, as torch.arange(float32) / (max / base) does.
    let step = (max_size as f64 / base_size as f64) as f32;
    let pos = |i: usize| (i as f32 / step) as f64;
    let mut out = Vec::with_capacity(max_size * max_size * width);
    for r in 0..max_size {
        for c in 0..max_size {
            for p in [pos(c), pos(r)] {
                out.extend(omega.iter().map(|w| (p * w).sin() as f32));
                out.extend(omega.iter().map(|w| (p * w).cos() as f32));
            }
        }
    }
    out
}

/// Timestep features and pooled text, embedded and summed into the conditioning vector.
#[derive(Module, Debug)]
pub struct CombinedTimestepTextProjEmbeddings<B: Backend> {
    /// MLP over the 256 sinusoidal timestep features.
    pub timestep_embedder: TimestepEmbedding<B>,
    /// `linear_1 -> SiLU -> linear_2` over the pooled text (diffusers `PixArtAlphaTextProjection`
    /// with `act_fn="silu"`, which has the same layout).
    pub text_embedder: TimestepEmbedding<B>,
}

/// Width of the sinusoidal timestep features of SD 3.
const TIME_FEATURES: usize = 256;

impl<B: Backend> CombinedTimestepTextProjEmbeddings<B> {
    /// Builds the layer for model width `width`.
    pub fn new(width: usize, pooled_dim: usize, device: &B::Device) -> Self {
        Self {
            timestep_embedder: TimestepEmbeddingConfig::new(TIME_FEATURES, width).init(device),
            text_embedder: TimestepEmbeddingConfig::new(pooled_dim, width).init(device),
        }
    }

    /// # Shapes
    /// - `timesteps`: `[batch]` (`1000 * sigma`), `pooled`: `[batch, pooled_dim]`
    /// - returns `[batch, width]`
    pub fn forward(&self, timesteps: Tensor<B, 1>, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        let features = timestep_embedding(timesteps, TIME_FEATURES, true, 0.0)
            .cast(FloatDType::from(pooled.dtype()));
        self.timestep_embedder.forward(features) + self.text_embedder.forward(pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed entries: width 8 (two frequencies, 1 and 10000^-0.5), table 4, base 2.
    #[test]
    fn table_closed_form() {
        let t = sincos_table(8, 4, 2);
        assert_eq!(t.len(), 4 * 4 * 8);
        // Row r = 1, column c = 3: x = 3 * 2 / 4 = 1.5, y = 0.5.
        let row = &t[(4 + 3) * 8..(4 + 4) * 8];
        let w1 = 0.01f64;
        let want = [
            1.5f64.sin(),
            (1.5 * w1).sin(),
            1.5f64.cos(),
            (1.5 * w1).cos(),
            0.5f64.sin(),
            (0.5 * w1).sin(),
            0.5f64.cos(),
            (0.5 * w1).cos(),
        ];
        for (g, w) in row.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
    }
}
