//! SD 2.x / 1.x as diffusers' `StableDiffusionPipeline`: CLIP tokenizer and text model, UNet,
//! AutoencoderKL and DDIM, loaded from a pipeline folder.

use std::path::Path;

use burn::tensor::{Tensor, backend::Backend};

use super::denoise::{GenerateConfig, Generated, Generation, token_ids, truncated};
use super::index::PipelineFolder;
use crate::attention::AttentionBackend;
use crate::denoiser::{Denoiser, TextCond};
use crate::error::Result;
use crate::hub::ModelLocation;
use crate::schedule::{DDIM_COMPATIBLE, DdimConfig, DdimScheduler};
use crate::text::{
    ClipTextConfig, ClipTextModel, ClipTokenizer, load_transformers, sd21_prompt_embeds,
};
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
    /// Loads the pipeline a [`ModelLocation`] found (a folder or a model in the Hugging Face
    /// cache, diffusers' `from_pretrained`); a file missing from a cached snapshot is named
    /// with the command that fetches it.
    pub fn from_pretrained(
        location: &ModelLocation,
        variant: Option<&str>,
        device: &B::Device,
    ) -> Result<Self> {
        Self::load(&location.root, variant, device).map_err(|e| location.explain(e))
    }

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
        let dir = folder.component("scheduler", DDIM_COMPATIBLE)?;
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
        self.encode_prompts_with(&self.text_encoder, prompts, &self.device)
    }

    /// [`encode_prompts`](Self::encode_prompts) with another CLIP text model of the same
    /// vocabulary, on its own backend and `device` (one being fine-tuned, with LoRA).
    pub fn encode_prompts_with<D: crate::backend::KernelBackend>(
        &self,
        text_encoder: &ClipTextModel<D>,
        prompts: &[&str],
        device: &D::Device,
    ) -> Result<(TextCond<D>, Vec<String>)> {
        let encodings = self.tokenizer.encode_batch(prompts)?;
        let truncated = truncated(prompts, &encodings);
        let ids = token_ids::<D>(&encodings, device)?;
        let hidden = sd21_prompt_embeds(text_encoder, ids)?;
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
        self.generation()
            .generate(denoiser, sampler, prompts, negative, config, latents, |p| {
                self.encode_prompts(p)
            })
    }

    /// Images for `prompts` (empty negative prompts, seeded noise) with `denoiser` and
    /// `text_encoder` in place of the pipeline's own: a UNet and CLIP being fine-tuned
    /// together, rendering validation images.
    pub fn generate_with_text_encoder<M: Denoiser<B>>(
        &self,
        denoiser: &M,
        text_encoder: &ClipTextModel<B>,
        prompts: &[&str],
        config: &GenerateConfig,
    ) -> Result<Generated<B>> {
        let sampler: DdimScheduler = self.scheduler.init()?;
        self.generation()
            .generate(denoiser, sampler, prompts, None, config, None, |p| {
                self.encode_prompts_with(text_encoder, p, &self.device)
            })
    }

    fn generation(&self) -> Generation<'_, B> {
        Generation {
            vae: &self.vae,
            sample_size: self.sample_size,
            size_multiple: 1,
            device: &self.device,
        }
    }
}
