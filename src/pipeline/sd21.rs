//! SD 2.x / 1.x as diffusers' `StableDiffusionPipeline`: CLIP tokenizer and text model, UNet,
//! AutoencoderKL and DDIM, loaded from a pipeline folder.

use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::denoise::{GenerateConfig, denoise, initial_latents};
use super::index::PipelineFolder;
use crate::attention::AttentionBackend;
use crate::ctcal::{Denoiser, TextCond};
use crate::error::{Error, Result};
use crate::schedule::{DdimConfig, DdimScheduler, Sampler};
use crate::text::{ClipTextConfig, ClipTextModel, ClipTokenizer, Encoding, load_transformers};
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::weights::load_module;

/// The pipeline classes whose folders [`StableDiffusion::load`] reads.
pub const SD_CLASSES: &[&str] = &["StableDiffusionPipeline"];

/// A Stable Diffusion 1.x/2.x pipeline.
#[derive(Debug)]
pub struct StableDiffusion<B: Backend> {
    /// `tokenizer/`.
    pub tokenizer: ClipTokenizer,
    /// `text_encoder/`: its `last_hidden_state` conditions the UNet.
    pub text_encoder: ClipTextModel<B>,
    /// `unet/`.
    pub unet: UNet2DConditionModel<B>,
    /// `vae/`.
    pub vae: AutoencoderKL<B>,
    /// `scheduler/`: DDIM with the folder's betas and prediction type.
    pub scheduler: DdimConfig,
    /// The UNet's `sample_size` (latent side of its training resolution).
    pub sample_size: usize,
    /// Where the models live.
    pub device: B::Device,
}

impl<B: AttentionBackend> StableDiffusion<B> {
    /// Loads every component of a diffusers pipeline folder; `variant` as in
    /// [`load_module`] (`Some("fp16")`). The scheduler must be DDIM-compatible (see
    /// [`DdimConfig::from_diffusers_json`]).
    pub fn load(root: &Path, variant: Option<&str>, device: &B::Device) -> Result<Self> {
        let folder = PipelineFolder::open(root)?;
        folder.expect_class(SD_CLASSES)?;
        let tokenizer = ClipTokenizer::from_folder(
            folder.component("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"])?,
        )?;
        let dir = folder.component("text_encoder", &["CLIPTextModel"])?;
        let config = ClipTextConfig::from_transformers_json(&dir.join("config.json"))?;
        let (text_encoder, _) = load_transformers(config.init(device), &dir, variant)?;
        let dir = folder.component("unet", &["UNet2DConditionModel"])?;
        let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json"))?;
        let sample_size = config.sample_size;
        let (unet, _) = load_module(config.init(device), &dir, variant)?;
        let dir = folder.component("vae", &["AutoencoderKL"])?;
        let config = AutoencoderKLConfig::from_diffusers_json(&dir.join("config.json"))?;
        let (vae, _) = load_module(config.init(device)?, &dir, variant)?;
        let dir = folder.component(
            "scheduler",
            &[
                "DDIMScheduler",
                "PNDMScheduler",
                "EulerDiscreteScheduler",
                "DDPMScheduler",
            ],
        )?;
        let scheduler = DdimConfig::from_diffusers_json(&dir.join("scheduler_config.json"))?;
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler,
            sample_size,
            device: device.clone(),
        })
    }

    /// The UNet's conditioning for `prompts`: tokenised to the tokenizer's max length (77)
    /// and encoded, `[batch, 77, hidden]`. Captions over the limit are truncated, as diffusers
    /// does, and named in the returned list.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<(TextCond<B>, Vec<String>)> {
        let encodings = self.tokenizer.encode_batch(prompts)?;
        let truncated = truncated(prompts, &encodings);
        let ids = token_ids::<B>(&encodings, &self.device)?;
        let hidden = self.text_encoder.forward(ids, false)?.last_hidden_state;
        Ok((
            TextCond {
                hidden,
                pooled: None,
            },
            truncated,
        ))
    }

    /// Generates one image per prompt: latents, decoded pixels in `[0, 1]`
    /// (`[batch, 3, h, w]`), and the prompts that were truncated. `negative` defaults to
    /// empty prompts; `latents` (already noise-scaled) replaces the seeded initial noise.
    pub fn generate(
        &self,
        prompts: &[&str],
        negative: Option<&[&str]>,
        config: &GenerateConfig,
        latents: Option<Tensor<B, 4>>,
    ) -> Result<Generated<B>> {
        self.generate_with(&self.unet, prompts, negative, config, latents)
    }

    /// [`generate`](Self::generate) with another denoiser of the same shape in place of the
    /// pipeline's own (a model being fine-tuned, rendering validation images).
    pub fn generate_with<M: Denoiser<B>>(
        &self,
        denoiser: &M,
        prompts: &[&str],
        negative: Option<&[&str]>,
        config: &GenerateConfig,
        latents: Option<Tensor<B, 4>>,
    ) -> Result<Generated<B>> {
        let sampler: DdimScheduler = self.scheduler.init()?;
        let run = Generation {
            vae: &self.vae,
            sample_size: self.sample_size,
            size_multiple: 1,
            device: &self.device,
        };
        run.generate(denoiser, sampler, prompts, negative, config, latents, |p| {
            self.encode_prompts(p)
        })
    }
}

/// What a pipeline generated.
#[derive(Debug, Clone)]
pub struct Generated<B: Backend> {
    /// The denoised latents (scaled, as the denoiser sees them).
    pub latents: Tensor<B, 4>,
    /// Decoded images in `[0, 1]`, `[batch, 3, h, w]`.
    pub images: Tensor<B, 4>,
    /// Prompts cut to the tokenizer's length.
    pub truncated: Vec<String>,
}

/// What generation needs besides the denoiser, sampler and prompt encoder: shared by both
/// pipelines.
pub(crate) struct Generation<'a, B: Backend> {
    pub vae: &'a AutoencoderKL<B>,
    /// The denoiser's native latent side.
    pub sample_size: usize,
    /// Latent sides must divide by this (the MMDiT's patch size).
    pub size_multiple: usize,
    pub device: &'a B::Device,
}

impl<B: Backend> Generation<'_, B> {
    /// Encodes prompts (and negative prompts under guidance), draws or takes the initial
    /// latents, denoises with classifier-free guidance and decodes.
    #[allow(clippy::too_many_arguments)]
    pub fn generate<M: Denoiser<B>, S: Sampler>(
        &self,
        denoiser: &M,
        mut sampler: S,
        prompts: &[&str],
        negative: Option<&[&str]>,
        config: &GenerateConfig,
        latents: Option<Tensor<B, 4>>,
        encode: impl Fn(&[&str]) -> Result<(TextCond<B>, Vec<String>)>,
    ) -> Result<Generated<B>> {
        let (cond, mut truncated) = encode(prompts)?;
        let uncond = if config.guided() {
            let empty = vec![""; prompts.len()];
            let negative = negative.unwrap_or(&empty);
            check_len(prompts.len(), negative.len())?;
            let (u, t) = encode(negative)?;
            truncated.extend(t);
            Some(u)
        } else {
            None
        };
        truncated.dedup();
        sampler.set_timesteps(config.steps)?;
        let latents = match latents {
            Some(l) => l,
            None => {
                let f = self.vae.downscale;
                let (h, w) = pixel_size(config, self.sample_size * f, f * self.size_multiple)?;
                let shape = [prompts.len(), self.vae.latent_channels, h / f, w / f];
                initial_latents(shape, config.seed, self.device)
                    .mul_scalar(sampler.init_noise_sigma())
            }
        };
        let latents = denoise(
            denoiser,
            &sampler,
            latents,
            &cond,
            uncond.as_ref(),
            config.guidance_scale,
        )?;
        let images = decode(self.vae, latents.clone())?;
        Ok(Generated {
            latents,
            images,
            truncated,
        })
    }
}

/// Decodes scaled latents to images in `[0, 1]` (diffusers' `postprocess` denormalisation).
pub fn decode<B: Backend>(vae: &AutoencoderKL<B>, latents: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
    let pixels = vae.decode(vae.image_from_latents(latents))?;
    Ok(pixels.div_scalar(2.0).add_scalar(0.5).clamp(0.0, 1.0))
}

/// Token ids `[batch, seq]` of padded encodings.
pub fn token_ids<B: Backend>(
    encodings: &[Encoding],
    device: &B::Device,
) -> Result<Tensor<B, 2, Int>> {
    let seq = encodings.first().map_or(0, |e| e.ids.len());
    if encodings.iter().any(|e| e.ids.len() != seq) {
        return Err(Error::Input(
            "encodings of different lengths in one batch".into(),
        ));
    }
    let ids: Vec<i64> = encodings
        .iter()
        .flat_map(|e| e.ids.iter().map(|&i| i as i64))
        .collect();
    Ok(Tensor::from_data(
        TensorData::new(ids, [encodings.len(), seq]),
        device,
    ))
}

/// The prompts whose encoding was truncated.
pub fn truncated(prompts: &[&str], encodings: &[Encoding]) -> Vec<String> {
    prompts
        .iter()
        .zip(encodings)
        .filter(|(_, e)| e.truncated)
        .map(|(p, _)| p.to_string())
        .collect()
}

fn check_len(prompts: usize, negative: usize) -> Result<()> {
    if prompts == negative {
        return Ok(());
    }
    Err(Error::Input(format!(
        "{negative} negative prompts for {prompts} prompts: give one per prompt"
    )))
}

/// `(height, width)` in pixels: the config's or `default`, which must divide by `multiple`.
fn pixel_size(config: &GenerateConfig, default: usize, multiple: usize) -> Result<(usize, usize)> {
    let (h, w) = (
        config.height.unwrap_or(default),
        config.width.unwrap_or(default),
    );
    if h == 0 || w == 0 || h % multiple != 0 || w % multiple != 0 {
        return Err(Error::Input(format!(
            "image size {h}x{w} must be positive multiples of {multiple}"
        )));
    }
    Ok((h, w))
}
