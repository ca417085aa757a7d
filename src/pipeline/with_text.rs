//! A denoiser fine-tuned together with LoRA on its pipeline's CLIP text encoders, as
//! diffusers' LoRA scripts do with `--train_text_encoder` and as the CTCal paper trains (text
//! encoder at 5e-6 beside the denoiser's 1e-4, [`TrainConfig::text_encoder_lr`]): CLIP for
//! SD 2.x ([`UNetWithTextEncoder`]), both CLIPs for SD 3 ([`SD3WithTextEncoders`]; T5 stays
//! frozen, as in `train_dreambooth_lora_sd3.py`).
//!
//! The captions are encoded inside each step by the module being trained, so the gradient
//! reaches the adapters on the CLIPs' self-attention (`q_proj`, `k_proj`, `v_proj`,
//! `out_proj`); images still go through the pipeline's frozen VAE. Adapter paths carry the
//! pipeline's component names (`unet.`, `transformer.`, `text_encoder.`, `text_encoder_2.`),
//! so the export is one file `pipe.load_lora_weights()` reads whole.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::denoise::token_ids;
use super::inputs::{image_latents, pipeline_check_caption, with_nouns};
use super::{GenerateConfig, StableDiffusion, StableDiffusion3};
use crate::attention::AutodiffAttentionBackend;
use crate::calibration::TrainBatch;
use crate::data::{Batch, BatchFeatures};
use crate::denoiser::TextCond;
use crate::error::{Error, Result};
use crate::lora::{LoraConfig, LoraLinear, LoraTarget};
use crate::mmdit::SD3Transformer2DModel;
use crate::nouns::Nouns;
use crate::text::{
    ClipTextModel, ClipTextModelWithProjection, Sd3TextEncoders, sd3_prompt_embeds, t5_zeros,
};
use crate::train::{TrainConfig, TrainInputs, Trainable, take_grads};
use crate::unet::UNet2DConditionModel;

/// An SD 2.x / 1.x UNet trained together with its pipeline's CLIP text encoder.
#[derive(Module, Debug)]
pub struct UNetWithTextEncoder<B: Backend> {
    /// The pipeline's `unet`.
    pub unet: UNet2DConditionModel<B>,
    /// The pipeline's `text_encoder`.
    pub text_encoder: ClipTextModel<B>,
}

/// An SD 3 / 3.5 transformer trained together with its pipeline's two CLIP text encoders.
#[derive(Module, Debug)]
pub struct SD3WithTextEncoders<B: Backend> {
    /// The pipeline's `transformer`.
    pub transformer: SD3Transformer2DModel<B>,
    /// The pipeline's `text_encoder` (CLIP-L).
    pub text_encoder: ClipTextModelWithProjection<B>,
    /// The pipeline's `text_encoder_2` (CLIP-G).
    pub text_encoder_2: ClipTextModelWithProjection<B>,
}

/// The LoRA targets of a denoiser and its CLIP text encoders: `denoiser`'s patterns (which
/// match only denoiser projections) and the CLIP self-attention projections
/// ([`LoraConfig::clip_default`]), at `denoiser`'s rank, alpha and dropout (the paper uses one
/// rank for both).
pub fn with_text_encoder_targets(denoiser: LoraConfig) -> LoraConfig {
    let mut config = denoiser;
    config
        .target_modules
        .extend(LoraConfig::clip_default().target_modules);
    config
}

/// `f` on the adapters of `part` with `prefix` before their paths.
fn map_prefixed<B: Backend, M: LoraTarget<B>>(
    part: M,
    prefix: &str,
    f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>,
) -> M {
    part.map_lora(&mut |path, layer| f(&format!("{prefix}{path}"), layer))
}

/// `f` on the adapters of `part` with `prefix` before their paths.
fn visit_prefixed<B: Backend, M: LoraTarget<B>>(
    part: &M,
    prefix: &str,
    f: &mut impl FnMut(&str, &LoraLinear<B>),
) {
    part.visit_lora(&mut |path, layer| f(&format!("{prefix}{path}"), layer));
}

/// Paths start with the component's name (`unet.`, `text_encoder.`), so the prefix is empty.
impl<B: Backend> LoraTarget<B> for UNetWithTextEncoder<B> {
    const PEFT_PREFIX: &'static str = "";

    fn map_lora(self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        Self {
            unet: map_prefixed(self.unet, UNet2DConditionModel::<B>::PEFT_PREFIX, f),
            text_encoder: map_prefixed(self.text_encoder, ClipTextModel::<B>::PEFT_PREFIX, f),
        }
    }

    fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        visit_prefixed(&self.unet, UNet2DConditionModel::<B>::PEFT_PREFIX, f);
        visit_prefixed(&self.text_encoder, ClipTextModel::<B>::PEFT_PREFIX, f);
    }
}

/// Paths start with the component's name (`transformer.`, `text_encoder.`,
/// `text_encoder_2.`: `SD3LoraLoaderMixin`'s), so the prefix is empty.
impl<B: Backend> LoraTarget<B> for SD3WithTextEncoders<B> {
    const PEFT_PREFIX: &'static str = "";

    fn map_lora(self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        Self {
            transformer: map_prefixed(self.transformer, SD3Transformer2DModel::<B>::PEFT_PREFIX, f),
            text_encoder: map_prefixed(self.text_encoder, "text_encoder.", f),
            text_encoder_2: map_prefixed(self.text_encoder_2, "text_encoder_2.", f),
        }
    }

    fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        visit_prefixed(
            &self.transformer,
            SD3Transformer2DModel::<B>::PEFT_PREFIX,
            f,
        );
        visit_prefixed(&self.text_encoder, "text_encoder.", f);
        visit_prefixed(&self.text_encoder_2, "text_encoder_2.", f);
    }
}

impl<B: AutodiffAttentionBackend> Trainable<B> for UNetWithTextEncoder<B> {
    type Denoiser = UNet2DConditionModel<B>;
    const TRAINS_TEXT_ENCODER: bool = true;

    fn denoiser(&self) -> &UNet2DConditionModel<B> {
        &self.unet
    }

    fn take_text_encoder_grads(&self, grads: &mut GradientsParams) -> GradientsParams {
        take_grads(&self.text_encoder, grads, GradientsParams::new())
    }
}

impl<B: AutodiffAttentionBackend> Trainable<B> for SD3WithTextEncoders<B> {
    type Denoiser = SD3Transformer2DModel<B>;
    const TRAINS_TEXT_ENCODER: bool = true;

    fn denoiser(&self) -> &SD3Transformer2DModel<B> {
        &self.transformer
    }

    fn take_text_encoder_grads(&self, grads: &mut GradientsParams) -> GradientsParams {
        let text = take_grads(&self.text_encoder, grads, GradientsParams::new());
        take_grads(&self.text_encoder_2, grads, text)
    }
}

/// Cached features hold another encoder's fixed output: a trained text encoder needs the
/// captions.
fn needs_images(batch: &Batch) -> Result<()> {
    match batch.features {
        BatchFeatures::Pixels(_) => Ok(()),
        BatchFeatures::Cached { .. } => Err(Error::Config(
            "training the text encoders encodes the captions in every step, and cached \
             features hold fixed text embeddings: train on an image folder"
                .into(),
        )),
    }
}

/// SD 2.x with its text encoder trained: the frozen VAE encodes the images, the module's
/// CLIP (on the autodiff backend) the captions.
impl<B: AutodiffAttentionBackend> TrainInputs<B, UNetWithTextEncoder<B>>
    for StableDiffusion<B::InnerBackend>
{
    fn train_batch(
        &self,
        model: &UNetWithTextEncoder<B>,
        batch: &Batch,
        config: &TrainConfig,
        device: &B::Device,
    ) -> Result<TrainBatch<B>> {
        needs_images(batch)?;
        let latents = image_latents(self, batch, config, device)?;
        let captions: Vec<&str> = batch.captions.iter().map(String::as_str).collect();
        let (cond, _) = self.encode_prompts_with(&model.text_encoder, &captions, device)?;
        with_nouns(self, batch, config, latents, cond)
    }

    fn check_caption(&self, caption: &str, nouns: &Nouns, config: &TrainConfig) -> Result<()> {
        pipeline_check_caption(self, caption, nouns, config)
    }

    fn render(
        &self,
        model: &UNetWithTextEncoder<B::InnerBackend>,
        prompts: &[&str],
        steps: usize,
        seed: u64,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        let config = GenerateConfig::new().with_steps(steps).with_seed(seed);
        let generated =
            self.generate_with_text_encoder(&model.unet, &model.text_encoder, prompts, &config)?;
        Ok(generated.images)
    }
}

/// SD 3 with its CLIPs trained: the frozen VAE encodes the images, the module's CLIP-L and
/// CLIP-G (on the autodiff backend) the captions' CLIP part, the pipeline's frozen T5 (on the
/// inner backend) its T5 part.
impl<B: AutodiffAttentionBackend> TrainInputs<B, SD3WithTextEncoders<B>>
    for StableDiffusion3<B::InnerBackend>
{
    fn train_batch(
        &self,
        model: &SD3WithTextEncoders<B>,
        batch: &Batch,
        config: &TrainConfig,
        device: &B::Device,
    ) -> Result<TrainBatch<B>> {
        needs_images(batch)?;
        let latents = image_latents(self, batch, config, device)?;
        let captions: Vec<&str> = batch.captions.iter().map(String::as_str).collect();
        let n = self.max_sequence_length;
        let tokens = self.tokenize(&captions, n)?;
        let clip_l = model
            .text_encoder
            .forward(token_ids::<B>(&tokens.clip_l, device)?, true)?;
        let clip_g = model
            .text_encoder_2
            .forward(token_ids::<B>(&tokens.clip_g, device)?, true)?;
        let t5 = match (&self.text_encoders.text_encoder_3, &tokens.t5) {
            (Some(t5), Some(encodings)) => {
                let ids = token_ids::<B::InnerBackend>(encodings, &self.device)?;
                Tensor::from_inner(t5.forward(ids, None)?).to_device(device)
            }
            _ => t5_zeros(captions.len(), n, self.joint_attention_dim, device),
        };
        let embeds = sd3_prompt_embeds(&clip_l, &clip_g, t5)?;
        let cond = TextCond {
            hidden: embeds.prompt_embeds,
            pooled: Some(embeds.pooled_prompt_embeds),
        };
        with_nouns(self, batch, config, latents, cond)
    }

    fn check_caption(&self, caption: &str, nouns: &Nouns, config: &TrainConfig) -> Result<()> {
        pipeline_check_caption(self, caption, nouns, config)
    }

    fn render(
        &self,
        model: &SD3WithTextEncoders<B::InnerBackend>,
        prompts: &[&str],
        steps: usize,
        seed: u64,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        let config = GenerateConfig::new().with_steps(steps).with_seed(seed);
        let encoders = Sd3TextEncoders {
            text_encoder: model.text_encoder.clone(),
            text_encoder_2: model.text_encoder_2.clone(),
            text_encoder_3: self.text_encoders.text_encoder_3.clone(),
        };
        let generated =
            self.generate_with_text_encoders(&model.transformer, &encoders, prompts, &config)?;
        Ok(generated.images)
    }
}
