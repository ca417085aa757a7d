//! The UNet's down, mid and up blocks (diffusers `unet_2d_blocks.py`: `CrossAttnDownBlock2D`,
//! `DownBlock2D`, `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`, `UpBlock2D`).
//!
//! A block without attention is the same struct with an empty `attentions` list, so there is
//! no enum (and no variant name) in the weight paths.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use super::resnet::ResnetBlock2D;
use super::transformer::Transformer2DModel;
use crate::attention::{AttentionBackend, AttentionHook};
use crate::nn::{Downsample2D, Upsample2D};

/// `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (without).
#[derive(Module, Debug)]
pub struct DownBlock2D<B: Backend> {
    /// Resnets, one per layer.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer after each resnet, or none.
    pub attentions: Vec<Transformer2DModel<B>>,
    /// The stride-2 convolution, absent in the last block.
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: AttentionBackend> DownBlock2D<B> {
    /// Runs the block, pushing every intermediate state onto `skips` for the up path.
    pub fn forward<H: AttentionHook<B>>(
        &self,
        mut x: Tensor<B, 4>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
        skips: &mut Vec<Tensor<B, 4>>,
        hook: &mut H,
    ) -> Tensor<B, 4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, temb.clone());
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context.clone(), hook);
            }
            skips.push(x.clone());
        }
        for down in &self.downsamplers {
            x = down.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn<B: Backend> {
    /// `resnets[0]` runs first, `resnets[i + 1]` after `attentions[i]`.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// The transformers.
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: AttentionBackend> UNetMidBlock2DCrossAttn<B> {
    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`, returned with the same shape.
    pub fn forward<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
        hook: &mut H,
    ) -> Tensor<B, 4> {
        let mut x = self.resnets[0].forward(x, temb.clone());
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attn.forward(x, context.clone(), hook);
            x = resnet.forward(x, temb.clone());
        }
        x
    }
}

/// `CrossAttnUpBlock2D` (with `attentions`) or `UpBlock2D` (without).
#[derive(Module, Debug)]
pub struct UpBlock2D<B: Backend> {
    /// Resnets, each taking the running state concatenated with one skip connection.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer after each resnet, or none.
    pub attentions: Vec<Transformer2DModel<B>>,
    /// The 2x upsampler, absent in the last block.
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: AttentionBackend> UpBlock2D<B> {
    /// Runs the block, popping one skip per resnet; the upsampler targets the spatial size of
    /// the next skip (or twice the current size when none is left).
    pub fn forward<H: AttentionHook<B>>(
        &self,
        mut x: Tensor<B, 4>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
        skips: &mut Vec<Tensor<B, 4>>,
        hook: &mut H,
    ) -> Tensor<B, 4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the UNet builds as many skips as its up blocks consume");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), temb.clone());
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context.clone(), hook);
            }
        }
        for up in &self.upsamplers {
            let [_, _, h, w] = x.dims();
            let size = skips
                .last()
                .map(|s| {
                    let [_, _, sh, sw] = s.dims();
                    [sh, sw]
                })
                .unwrap_or([2 * h, 2 * w]);
            x = up.forward(x, size);
        }
        x
    }
}
