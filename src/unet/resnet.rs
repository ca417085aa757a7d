//! `ResnetBlock2D`, `Downsample2D` and `Upsample2D` (diffusers `resnet.py`, `downsampling.py`,
//! `upsampling.py`), in the variants SD 1.x/2.x use.

use crate::nn::{conv2d, silu};
use crate::precision::in_accumulation;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Tensor, backend::Backend};

/// A 3x3 convolution with padding 1 and the given stride.
pub(crate) fn conv3x3<B: Backend>(
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

/// `norm1 -> SiLU -> conv1 (+ time_emb_proj(SiLU(temb))) -> norm2 -> SiLU -> conv2`, plus a
/// shortcut (`conv_shortcut`, 1x1, when the widths differ), divided by `output_scale_factor`.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    /// First group norm.
    pub norm1: GroupNorm<B>,
    /// First 3x3 convolution.
    pub conv1: Conv2d<B>,
    /// Projection of the time embedding to the output width.
    pub time_emb_proj: Linear<B>,
    /// Second group norm.
    pub norm2: GroupNorm<B>,
    /// Second 3x3 convolution.
    pub conv2: Conv2d<B>,
    /// 1x1 shortcut when `in_channels != out_channels`.
    pub conv_shortcut: Option<Conv2d<B>>,
    /// Output divisor (`output_scale_factor`).
    pub output_scale_factor: f64,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// Builds a block (`groups` and `eps` for both norms, as in SD's configs).
    pub fn new(
        cin: usize,
        cout: usize,
        temb: usize,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
        device: &B::Device,
    ) -> Self {
        let norm = |c| {
            GroupNormConfig::new(groups, c)
                .with_epsilon(eps)
                .init(device)
        };
        Self {
            norm1: norm(cin),
            conv1: conv3x3(cin, cout, 1, 1, device),
            time_emb_proj: LinearConfig::new(temb, cout).init(device),
            norm2: norm(cout),
            conv2: conv3x3(cout, cout, 1, 1, device),
            conv_shortcut: (cin != cout)
                .then(|| Conv2dConfig::new([cin, cout], [1, 1]).init(device)),
            output_scale_factor,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]`, `temb`: `[batch, temb_channels]`
    /// - returns `[batch, out_channels, h, w]`
    pub fn forward(&self, x: Tensor<B, 4>, temb: Tensor<B, 2>) -> Tensor<B, 4> {
        let h = conv2d(
            &self.conv1,
            silu(in_accumulation(x.clone(), |x| self.norm1.forward(x))),
        );
        let t = self.time_emb_proj.forward(silu(temb));
        let h = h + t.unsqueeze_dim::<3>(2).unsqueeze_dim::<4>(3);
        let h = conv2d(
            &self.conv2,
            silu(in_accumulation(h, |h| self.norm2.forward(h))),
        );
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv2d(conv, x),
            None => x,
        };
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out.div_scalar(self.output_scale_factor)
        }
    }
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
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
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
    pub fn forward(&self, x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
        conv2d(&self.conv, nearest_resize(x, size))
    }
}

/// Nearest-neighbour resize to `size` where each side is `2n` or `2n - 1`: pixel `i` takes
/// source `floor(i * n / out)`, which equals `floor(i / 2)` for those sizes, so an exact 2x
/// repeat cropped to `size` reproduces PyTorch's `interpolate(mode="nearest")`.
pub(crate) fn nearest_resize<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
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
