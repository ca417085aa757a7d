//! The latent autoencoder of SD 2.1 and SD 3: diffusers' `AutoencoderKL`
//! (`autoencoders/autoencoder_kl.py`, `autoencoders/vae.py`).
//!
//! [`AutoencoderKL::encode`] maps an image in `[-1, 1]` to a [`DiagonalGaussian`] posterior,
//! [`AutoencoderKL::decode`] maps a latent back; [`AutoencoderKL::latents_from_image`] and
//! [`AutoencoderKL::image_from_latents`] apply the pipelines' `scaling_factor` and
//! `shift_factor`, so the denoiser sees unit-variance latents. [`images_to_tensor`] and
//! [`tensor_to_images`] convert u8 RGB images.
//!
//! Field names are the state-dict segments, so `vae/diffusion_pytorch_model.safetensors` loads
//! with [`crate::weights::load_module`]; the mid-block attention of older checkpoints
//! (`query`/`key`/`value`/`proj_attn`) is renamed by the loader, as diffusers does.
//! Tiled and sliced encoding/decoding are not ported.

mod attention;
mod blocks;
mod coder;
mod config;
mod gaussian;
mod image;
mod norm;

pub use attention::{Attention, MAX_SCORES};
pub use blocks::{DownEncoderBlock2D, ResnetBlock2D, UNetMidBlock2D, UpDecoderBlock2D};
pub use coder::{Decoder, Encoder};
pub use config::{AutoencoderKLConfig, DownEncoderBlockType, UpDecoderBlockType};
pub use gaussian::{DiagonalGaussian, LOGVAR_RANGE};
pub use image::{images_to_tensor, tensor_to_images};

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Tensor, backend::Backend};

use crate::backend::KernelBackend;
use crate::error::{Error, Result};

/// diffusers' `AutoencoderKL`: [`Encoder`], optional 1x1 `quant_conv` and `post_quant_conv`,
/// [`Decoder`], and the latent scaling of the pipelines.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    /// Image to moments.
    pub encoder: Encoder<B>,
    /// Latent to image.
    pub decoder: Decoder<B>,
    /// 1x1 convolution on the moments (`use_quant_conv`; SD 2.1 has it, SD 3 not).
    pub quant_conv: Option<Conv2d<B>>,
    /// 1x1 convolution on the latent (`use_post_quant_conv`).
    pub post_quant_conv: Option<Conv2d<B>>,
    /// `scaling_factor`.
    pub scaling_factor: f64,
    /// `shift_factor` (0 when the config has none).
    pub shift_factor: f64,
    /// Channels of the latent.
    pub latent_channels: usize,
    /// How many times the encoder halves each side.
    pub downscale: usize,
}

impl AutoencoderKLConfig {
    /// Builds the VAE with fresh weights; errors if the config is inconsistent (see
    /// [`AutoencoderKLConfig::validate`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<AutoencoderKL<B>> {
        self.validate()?;
        let z2 = 2 * self.latent_channels;
        let z = self.latent_channels;
        Ok(AutoencoderKL {
            encoder: Encoder::new(self, device),
            decoder: Decoder::new(self, device),
            quant_conv: self
                .use_quant_conv
                .then(|| Conv2dConfig::new([z2, z2], [1, 1]).init(device)),
            post_quant_conv: self
                .use_post_quant_conv
                .then(|| Conv2dConfig::new([z, z], [1, 1]).init(device)),
            scaling_factor: self.scaling_factor,
            shift_factor: self.shift_factor.unwrap_or(0.0),
            latent_channels: self.latent_channels,
            downscale: self.downscale(),
        })
    }
}

impl<B: Backend> AutoencoderKL<B> {
    /// The posterior over latents of an image batch (diffusers `encode(x).latent_dist`).
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, h, w]` in `[-1, 1]`, `h` and `w` multiples of the `downscale` field
    ///   (other sizes are floored, as in diffusers)
    /// - mean and log-variance: `[batch, latent_channels, h / f, w / f]`
    pub fn encode(&self, x: Tensor<B, 4>) -> Result<DiagonalGaussian<B>>
    where
        B: KernelBackend,
    {
        let [_, c, h, w] = x.dims();
        let expected = self.encoder.conv_in.weight.dims()[1];
        if c != expected || h < self.downscale || w < self.downscale {
            return Err(Error::Input(format!(
                "VAE input has shape {:?}; expected [batch, {expected}, h, w] with h, w >= {}",
                x.dims(),
                self.downscale
            )));
        }
        let moments = self.encoder.forward(x);
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(moments),
            None => moments,
        };
        Ok(DiagonalGaussian::from_moments(moments))
    }

    /// Decodes unscaled latents to an image in (about) `[-1, 1]` (diffusers `decode(z).sample`).
    ///
    /// # Shapes
    /// - `z`: `[batch, latent_channels, h, w]`; returns `[batch, 3, h * f, w * f]`
    pub fn decode(&self, z: Tensor<B, 4>) -> Result<Tensor<B, 4>>
    where
        B: KernelBackend,
    {
        let [_, c, _, _] = z.dims();
        if c != self.latent_channels {
            return Err(Error::Input(format!(
                "latent has shape {:?}; the VAE expects {} channels",
                z.dims(),
                self.latent_channels
            )));
        }
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        Ok(self.decoder.forward(z))
    }

    /// The denoiser's latents from a VAE latent: `(z - shift_factor) * scaling_factor`.
    pub fn latents_from_image(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        z.sub_scalar(self.shift_factor)
            .mul_scalar(self.scaling_factor)
    }

    /// A VAE latent from the denoiser's latents: `z / scaling_factor + shift_factor`.
    pub fn image_from_latents(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        latents
            .div_scalar(self.scaling_factor)
            .add_scalar(self.shift_factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    /// Shapes through the tiny VAE (non-square, odd latent side), scaling round trip, and
    /// input errors that name the shape.
    #[test]
    fn shapes_scaling_and_errors() {
        let device = Default::default();
        let config = AutoencoderKLConfig::tiny()
            .with_scaling_factor(0.5)
            .with_shift_factor(Some(0.25));
        let vae = config.init::<TestBackend>(&device).unwrap();
        let x = Tensor::<TestBackend, 4>::ones([2, 3, 10, 6], &device);
        let posterior = vae.encode(x).unwrap();
        assert_eq!(posterior.mean.dims(), [2, 4, 5, 3]);
        assert_eq!(posterior.logvar.dims(), [2, 4, 5, 3]);
        let image = vae.decode(posterior.mode()).unwrap();
        assert_eq!(image.dims(), [2, 3, 10, 6]);

        let z = Tensor::<TestBackend, 4>::from_floats([[[[1.0, -2.0]]]], &device);
        let s = vae.latents_from_image(z.clone());
        assert_eq!(s.to_data().to_vec::<f64>().unwrap(), vec![0.375, -1.125]);
        let back = vae.image_from_latents(s).to_data().to_vec::<f64>().unwrap();
        assert_eq!(back, vec![1.0, -2.0]);

        let e = vae
            .encode(Tensor::zeros([1, 4, 8, 8], &device))
            .unwrap_err();
        assert!(e.to_string().contains("[1, 4, 8, 8]"), "{e}");
        let e = vae
            .decode(Tensor::zeros([1, 16, 2, 2], &device))
            .unwrap_err();
        assert!(e.to_string().contains("4 channels"), "{e}");
        assert!(
            AutoencoderKLConfig::tiny()
                .with_norm_num_groups(3)
                .init::<TestBackend>(&device)
                .is_err()
        );
    }
}
