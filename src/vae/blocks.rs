//! The VAE's blocks (diffusers `unet_2d_blocks.py`): `DownEncoderBlock2D`, `UpDecoderBlock2D`,
//! `UNetMidBlock2D`, and the `ResnetBlock2D` they hold, which in the VAE has no time
//! embedding (`temb_channels=None`) and uses eps 1e-6 everywhere.
//!
//! The downsampler and upsampler are the UNet's [`Downsample2D`] and [`Upsample2D`]; the VAE's
//! downsampler pads only bottom and right (diffusers' `padding=0` case pads `(0, 1, 0, 1)`),
//! which here is the convolution's own asymmetric padding.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::{Tensor, backend::Backend};

use super::attention::Attention;
use super::norm::{conv3x3, group_norm};
use crate::backend::KernelBackend;
use crate::nn::{Downsample2D, Upsample2D, silu};

/// `norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> conv2`, plus a shortcut (`conv_shortcut`, 1x1,
/// when the widths differ): diffusers' `ResnetBlock2D` without a time embedding.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    /// First group norm.
    pub norm1: GroupNorm<B>,
    /// First 3x3 convolution.
    pub conv1: Conv2d<B>,
    /// Second group norm.
    pub norm2: GroupNorm<B>,
    /// Second 3x3 convolution.
    pub conv2: Conv2d<B>,
    /// 1x1 shortcut when `in_channels != out_channels`.
    pub conv_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// Builds a block from `cin` to `cout` channels with `groups` groups per norm.
    pub fn new(cin: usize, cout: usize, groups: usize, device: &B::Device) -> Self {
        Self {
            norm1: group_norm(groups, cin, device),
            conv1: conv3x3(cin, cout, device),
            norm2: group_norm(groups, cout, device),
            conv2: conv3x3(cout, cout, device),
            conv_shortcut: (cin != cout)
                .then(|| Conv2dConfig::new([cin, cout], [1, 1]).init(device)),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]`; returns `[batch, out_channels, h, w]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + h
    }
}

/// Resnets, then (except at the last level) a stride-2 convolution that pads bottom and right.
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D<B: Backend> {
    /// `layers_per_block` resnets; the first changes the width.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One downsampler, or none at the last level.
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> DownEncoderBlock2D<B> {
    /// Builds a level from `cin` to `cout` channels.
    pub fn new(
        cin: usize,
        cout: usize,
        layers: usize,
        groups: usize,
        downsample: bool,
        device: &B::Device,
    ) -> Self {
        let resnets = (0..layers)
            .map(|i| ResnetBlock2D::new(if i == 0 { cin } else { cout }, cout, groups, device))
            .collect();
        let downsamplers = if downsample {
            // diffusers: F.pad(x, (0, 1, 0, 1)), then a 3x3 stride-2 convolution without padding.
            let conv = Conv2dConfig::new([cout, cout], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
                .init(device);
            vec![Downsample2D { conv }]
        } else {
            Vec::new()
        };
        Self {
            resnets,
            downsamplers,
        }
    }

    /// `[b, cin, h, w]` to `[b, cout, floor(h / 2), floor(w / 2)]` (or `[b, cout, h, w]` at the
    /// last level).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4>
    where
        B: KernelBackend,
    {
        let x = self.resnets.iter().fold(x, |x, r| r.forward(x));
        self.downsamplers.iter().fold(x, |x, d| d.forward(x))
    }
}

/// Resnets, then (except at the last level) nearest-2x upsampling and a 3x3 convolution.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D<B: Backend> {
    /// `layers_per_block + 1` resnets; the first changes the width.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One upsampler, or none at the last level.
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: Backend> UpDecoderBlock2D<B> {
    /// Builds a level from `cin` to `cout` channels with `layers` resnets.
    pub fn new(
        cin: usize,
        cout: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
        device: &B::Device,
    ) -> Self {
        let resnets = (0..layers)
            .map(|i| ResnetBlock2D::new(if i == 0 { cin } else { cout }, cout, groups, device))
            .collect();
        let upsamplers = if upsample {
            vec![Upsample2D::new(cout, device)]
        } else {
            Vec::new()
        };
        Self {
            resnets,
            upsamplers,
        }
    }

    /// `[b, cin, h, w]` to `[b, cout, 2h, 2w]` (or `[b, cout, h, w]` at the last level).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4>
    where
        B: KernelBackend,
    {
        let x = self.resnets.iter().fold(x, |x, r| r.forward(x));
        self.upsamplers.iter().fold(x, |x, u| {
            let [_, _, h, w] = x.dims();
            u.forward(x, [2 * h, 2 * w])
        })
    }
}

/// `resnets.0 -> attentions.0 -> resnets.1` at constant width (diffusers `UNetMidBlock2D`
/// with one layer and no time embedding); without attention, just the two resnets.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D<B: Backend> {
    /// Two resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One single-head self-attention, or none (`mid_block_add_attention = false`).
    pub attentions: Vec<Attention<B>>,
}

impl<B: Backend> UNetMidBlock2D<B> {
    /// Builds the block at `channels` channels.
    pub fn new(channels: usize, groups: usize, attention: bool, device: &B::Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| ResnetBlock2D::new(channels, channels, groups, device))
                .collect(),
            attentions: if attention {
                vec![Attention::new(channels, groups, device)]
            } else {
                Vec::new()
            },
        }
    }

    /// `[b, c, h, w]` to `[b, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.resnets[0].forward(x);
        for (i, resnet) in self.resnets[1..].iter().enumerate() {
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(x);
            }
            x = resnet.forward(x);
        }
        x
    }
}
