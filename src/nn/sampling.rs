//! `Downsample2D` and `Upsample2D` (diffusers `downsampling.py`, `upsampling.py`), shared by
//! the UNet and the VAE, and the 3x3 convolution and nearest-neighbour resize they are made of.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Tensor, backend::Backend};

use super::conv2d;
use crate::backend::KernelBackend;

/// A 3x3 convolution with padding 1 and the given stride.
pub fn conv3x3<B: Backend>(
    cin: usize,
    cout: usize,
    stride: usize,
    padding: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .init(device)
}

/// A stride-2 3x3 convolution (`downsamplers.0.conv`).
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    /// The convolution.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample2D<B> {
    /// Builds the layer with diffusers' `downsample_padding`.
    pub fn new(channels: usize, padding: usize, device: &B::Device) -> Self {
        Self {
            conv: conv3x3(channels, channels, 2, padding, device),
        }
    }

    /// `[b, c, h, w]` to `[b, c, (h + 2p - 3) / 2 + 1, ...]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4>
    where
        B: KernelBackend,
    {
        conv2d(&self.conv, x)
    }
}

/// Nearest-neighbour upsampling to a target size, then a 3x3 convolution
/// (`upsamplers.0.conv`).
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    /// The convolution.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    /// Builds the layer.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            conv: conv3x3(channels, channels, 1, 1, device),
        }
    }

    /// Upsamples `x` to `size` (`2h`, or `2h - 1` where the skip connection it meets has an
    /// odd side, as diffusers' `upsample_size`), then convolves.
    pub fn forward(&self, x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4>
    where
        B: KernelBackend,
    {
        conv2d(&self.conv, nearest_resize(x, size))
    }
}

/// Nearest-neighbour resize to `size` where each side is `2n` or `2n - 1`: pixel `i` takes
/// source `floor(i * n / out)`, which equals `floor(i / 2)` for those sizes, so an exact 2x
/// repeat cropped to `size` reproduces PyTorch's `interpolate(mode="nearest")`.
pub fn nearest_resize<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let up = x
        .reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w]);
    if size == [2 * h, 2 * w] {
        up
    } else {
        up.slice([0..b, 0..c, 0..size[0], 0..size[1]])
    }
}
