//! The VAE's `Encoder` and `Decoder` (diffusers `autoencoders/vae.py`, group-norm variant).

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};

use super::blocks::{DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D};
use super::config::AutoencoderKLConfig;
use super::norm::{conv3x3, group_norm};
use crate::backend::KernelBackend;
use crate::nn::silu;

/// Image to latent moments: `conv_in`, one [`DownEncoderBlock2D`] per level, the mid block,
/// `conv_norm_out`, SiLU and `conv_out` to `2 * latent_channels` (mean and log-variance).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// 3x3 convolution from the image channels to `block_out_channels[0]`.
    pub conv_in: Conv2d<B>,
    /// One block per level, the shallowest first.
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    /// Resnet, attention, resnet at the deepest width.
    pub mid_block: UNetMidBlock2D<B>,
    /// Output group norm.
    pub conv_norm_out: GroupNorm<B>,
    /// 3x3 convolution to `2 * latent_channels`.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    /// Builds the encoder of `config` (assumed validated).
    pub fn new(config: &AutoencoderKLConfig, device: &B::Device) -> Self {
        let ch = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let last = ch[ch.len() - 1];
        let down_blocks = (0..ch.len())
            .map(|i| {
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                let downsample = i + 1 < ch.len();
                DownEncoderBlock2D::new(
                    cin,
                    ch[i],
                    config.layers_per_block,
                    groups,
                    downsample,
                    device,
                )
            })
            .collect();
        Self {
            conv_in: conv3x3(config.in_channels, ch[0], device),
            down_blocks,
            mid_block: UNetMidBlock2D::new(last, groups, config.mid_block_add_attention, device),
            conv_norm_out: group_norm(groups, last, device),
            conv_out: conv3x3(last, 2 * config.latent_channels, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]`
    /// - returns `[batch, 2 * latent_channels, h / f, w / f]` with `f = 2^(levels - 1)`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4>
    where
        B: KernelBackend,
    {
        let x = self.conv_in.forward(x);
        let x = self.down_blocks.iter().fold(x, |x, b| b.forward(x));
        let x = self.mid_block.forward(x);
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

/// Latent to image: `conv_in`, the mid block, one [`UpDecoderBlock2D`] per level (the deepest
/// first, `layers_per_block + 1` resnets each), `conv_norm_out`, SiLU and `conv_out`.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// 3x3 convolution from the latent channels to the deepest width.
    pub conv_in: Conv2d<B>,
    /// Resnet, attention, resnet at the deepest width.
    pub mid_block: UNetMidBlock2D<B>,
    /// One block per level, the deepest first.
    pub up_blocks: Vec<UpDecoderBlock2D<B>>,
    /// Output group norm.
    pub conv_norm_out: GroupNorm<B>,
    /// 3x3 convolution to the image channels.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    /// Builds the decoder of `config` (assumed validated).
    pub fn new(config: &AutoencoderKLConfig, device: &B::Device) -> Self {
        let rev: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let groups = config.norm_num_groups;
        let up_blocks = (0..rev.len())
            .map(|i| {
                let cin = if i == 0 { rev[0] } else { rev[i - 1] };
                let upsample = i + 1 < rev.len();
                UpDecoderBlock2D::new(
                    cin,
                    rev[i],
                    config.layers_per_block + 1,
                    groups,
                    upsample,
                    device,
                )
            })
            .collect();
        let first = rev[rev.len() - 1];
        Self {
            conv_in: conv3x3(config.latent_channels, rev[0], device),
            mid_block: UNetMidBlock2D::new(rev[0], groups, config.mid_block_add_attention, device),
            up_blocks,
            conv_norm_out: group_norm(groups, first, device),
            conv_out: conv3x3(first, config.out_channels, device),
        }
    }

    /// # Shapes
    /// - `z`: `[batch, latent_channels, h, w]`
    /// - returns `[batch, out_channels, h * f, w * f]` with `f = 2^(levels - 1)`
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4>
    where
        B: KernelBackend,
    {
        let x = self.conv_in.forward(z);
        let x = self.mid_block.forward(x);
        let x = self.up_blocks.iter().fold(x, |x, b| b.forward(x));
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}
