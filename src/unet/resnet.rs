//! `ResnetBlock2D` (diffusers `resnet.py`) in the variant SD 1.x/2.x's UNet uses.

use crate::backend::KernelBackend;
use crate::nn::{conv2d, conv3x3, group_norm, silu_kernel};
use crate::precision::in_accumulation;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

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
    pub fn forward(&self, x: Tensor<B, 4>, temb: Tensor<B, 2>) -> Tensor<B, 4>
    where
        B: KernelBackend,
    {
        let h = conv2d(
            &self.conv1,
            silu_kernel(in_accumulation(x.clone(), |x| group_norm(&self.norm1, x))),
        );
        let t = self.time_emb_proj.forward(silu_kernel(temb));
        let h = h + t.unsqueeze_dim::<3>(2).unsqueeze_dim::<4>(3);
        let h = conv2d(
            &self.conv2,
            silu_kernel(in_accumulation(h, |h| group_norm(&self.norm2, h))),
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
