//! The small trainable auto-encoder on attention maps behind CTCal's semantic term.
//!
//! Project default (the paper gives no architecture): resize the map to 16x16, two stride-2 3x3
//! convolutions with a SiLU between (16 then `latent_channels` channels), giving a
//! `latent_channels x 4 x 4` code; the decoder mirrors it with 2x nearest upsampling before each
//! 3x3 convolution.

use crate::nn::silu;
use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Tensor, backend::Backend};

use crate::nn::nearest_resize;

/// Architecture of the [`MapAutoEncoder`].
#[derive(Config, Debug, PartialEq)]
pub struct MapAutoEncoderConfig {
    /// Side of the square input maps are resized to.
    #[config(default = 16)]
    pub input_size: usize,
    /// Channels after the first convolution.
    #[config(default = 16)]
    pub hidden_channels: usize,
    /// Channels of the code (`input_size / 4` square).
    #[config(default = 32)]
    pub latent_channels: usize,
}

/// Encoder `enc1`, `enc2`; decoder `dec1`, `dec2`.
#[derive(Module, Debug)]
pub struct MapAutoEncoder<B: Backend> {
    /// 1 to `hidden` channels, stride 2.
    pub enc1: Conv2d<B>,
    /// `hidden` to `latent` channels, stride 2.
    pub enc2: Conv2d<B>,
    /// `latent` to `hidden` channels after 2x upsampling.
    pub dec1: Conv2d<B>,
    /// `hidden` to 1 channel after 2x upsampling.
    pub dec2: Conv2d<B>,
    /// Side of the input maps.
    pub input_size: usize,
}

fn conv<B: Backend>(cin: usize, cout: usize, stride: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

impl MapAutoEncoderConfig {
    /// Builds the auto-encoder with burn's default initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MapAutoEncoder<B> {
        let (h, l) = (self.hidden_channels, self.latent_channels);
        MapAutoEncoder {
            enc1: conv(1, h, 2, device),
            enc2: conv(h, l, 2, device),
            dec1: conv(l, h, 1, device),
            dec2: conv(h, 1, 1, device),
            input_size: self.input_size,
        }
    }
}

impl<B: Backend> MapAutoEncoder<B> {
    /// # Shapes
    /// - `maps`: `[n, 1, input_size, input_size]`, returns `[n, latent, input_size / 4, ...]`
    pub fn encode(&self, maps: Tensor<B, 4>) -> Tensor<B, 4> {
        self.enc2.forward(silu(self.enc1.forward(maps)))
    }

    /// # Shapes
    /// - `code`: `[n, latent, s, s]`, returns `[n, 1, 4 s, 4 s]`
    pub fn decode(&self, code: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = code.dims();
        let x = silu(self.dec1.forward(nearest_resize(code, [2 * h, 2 * w])));
        self.dec2.forward(nearest_resize(x, [4 * h, 4 * w]))
    }
}
