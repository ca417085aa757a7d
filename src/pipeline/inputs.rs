//! Training from plain images and captions: a pipeline's frozen VAE, tokenizer and text
//! encoders turn each loaded batch into the latents, conditioning and noun positions of a
//! training step.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};

use super::{GenerateConfig, Generated, StableDiffusion, StableDiffusion3};
use crate::attention::{AttentionBackend, AutodiffAttentionBackend};
use crate::backend::KernelBackend;
use crate::calibration::TrainBatch;
use crate::data::{Batch, BatchFeatures};
use crate::denoiser::Denoiser;
use crate::denoiser::TextCond;
use crate::error::Result;
use crate::mmdit::SD3Transformer2DModel;
use crate::nouns::{JointWordTokens, NounTokens, Nouns, WordTokens};
use crate::train::{TrainConfig, TrainInputs};
use crate::unet::UNet2DConditionModel;
use crate::vae::AutoencoderKL;

/// What training needs of a pipeline: encoding images and captions, noun positions, and
/// rendering validation images with the denoiser being trained.
pub trait TrainingPipeline<B: Backend> {
    /// The pipeline's denoiser type (the model a training run fine-tunes).
    type Denoiser: Denoiser<B>;
    /// Renders `prompts` with `denoiser` in place of the pipeline's own.
    fn render(
        &self,
        denoiser: &Self::Denoiser,
        prompts: &[&str],
        config: &GenerateConfig,
    ) -> Result<Generated<B>>;
    /// The denoiser's conditioning for `prompts` and the prompts that were truncated.
    fn encode_prompts_for_training(&self, prompts: &[&str]) -> Result<(TextCond<B>, Vec<String>)>;
    /// Token positions of caption words in the denoiser's text sequence, from the segments
    /// `nouns` names (SD 2.1: its CLIP tokenizer; SD 3: the CLIP tokens, then the T5 tokens
    /// at 77 when the pipeline has T5).
    fn word_tokens(&self, nouns: NounTokens) -> Box<dyn WordTokens + '_>;
    /// Checks, before training, that `caption` can be encoded, and returns how many leading
    /// text positions its tokens may fill (the tokenizers' lengths: a noun beyond them was cut
    /// off).
    fn caption_positions(&self, caption: &str) -> Result<usize>;
    /// The denoiser's input for images `[batch, 3, h, w]` in `[-1, 1]`: the VAE's scaled
    /// latents (a posterior sample drawn from the backend's seeded RNG with
    /// `sample_posterior`, else the posterior mean) or, for a pixel-space model, the pixels.
    fn encode_images(&self, pixels: Tensor<B, 4>, sample_posterior: bool) -> Result<Tensor<B, 4>>;
}

/// [`TrainingPipeline::encode_images`] for a latent model: `vae` encodes, then scales.
pub fn vae_latents<B: KernelBackend>(
    vae: &AutoencoderKL<B>,
    pixels: Tensor<B, 4>,
    sample_posterior: bool,
) -> Result<Tensor<B, 4>> {
    // On the VAE's device (a data-parallel peer's pixels may be on another).
    let pixels = pixels.to_device(&vae.encoder.conv_in.weight.device());
    let posterior = vae.encode(pixels)?;
    let z = if sample_posterior {
        let eps = Tensor::random(
            posterior.mean.dims(),
            Distribution::Normal(0.0, 1.0),
            &posterior.mean.device(),
        );
        posterior.sample_with_noise(eps)?
    } else {
        posterior.mode()
    };
    Ok(vae.latents_from_image(z))
}

impl<B: AttentionBackend> TrainingPipeline<B> for StableDiffusion<B> {
    type Denoiser = UNet2DConditionModel<B>;
    fn render(
        &self,
        denoiser: &Self::Denoiser,
        prompts: &[&str],
        config: &GenerateConfig,
    ) -> Result<Generated<B>> {
        self.generate_with(denoiser, prompts, None, config, None)
    }
    fn encode_prompts_for_training(&self, prompts: &[&str]) -> Result<(TextCond<B>, Vec<String>)> {
        self.encode_prompts(prompts)
    }
    /// One text encoder: CLIP positions whatever `nouns` says.
    fn word_tokens(&self, _nouns: NounTokens) -> Box<dyn WordTokens + '_> {
        Box::new(&self.tokenizer)
    }
    /// CLIP truncates an over-long caption (as diffusers does).
    fn caption_positions(&self, _caption: &str) -> Result<usize> {
        Ok(self.tokenizer.max_length())
    }
    fn encode_images(&self, pixels: Tensor<B, 4>, sample_posterior: bool) -> Result<Tensor<B, 4>> {
        vae_latents(&self.vae, pixels, sample_posterior)
    }
}

impl<B: AttentionBackend> TrainingPipeline<B> for StableDiffusion3<B> {
    type Denoiser = SD3Transformer2DModel<B>;
    fn render(
        &self,
        denoiser: &Self::Denoiser,
        prompts: &[&str],
        config: &GenerateConfig,
    ) -> Result<Generated<B>> {
        self.generate_with(denoiser, prompts, None, config, None)
    }
    fn encode_prompts_for_training(&self, prompts: &[&str]) -> Result<(TextCond<B>, Vec<String>)> {
        self.encode_prompts(prompts, self.max_sequence_length)
    }
    /// SD 3's joint text sequence: the CLIP tokens (77), then `max_sequence_length` T5 tokens
    /// (`encode_prompt` concatenates them in this order); without T5 that part is zeros and
    /// carries no noun.
    fn word_tokens(&self, nouns: NounTokens) -> Box<dyn WordTokens + '_> {
        match (self.t5_word_tokens(), nouns) {
            (Some(t5), NounTokens::ClipAndT5) => Box::new(JointWordTokens::new(vec![
                (0, Box::new(&self.tokenizer)),
                (self.tokenizer.max_length(), Box::new(t5)),
            ])),
            _ => Box::new(&self.tokenizer),
        }
    }
    /// CLIP truncates an over-long caption at 77 tokens and T5 at `max_sequence_length` (as
    /// diffusers does).
    fn caption_positions(&self, _caption: &str) -> Result<usize> {
        let t5 = self.t5_word_tokens().map_or(0, |t| t.max_length);
        Ok(self.tokenizer.max_length() + t5)
    }
    fn encode_images(&self, pixels: Tensor<B, 4>, sample_posterior: bool) -> Result<Tensor<B, 4>> {
        vae_latents(&self.vae, pixels, sample_posterior)
    }
}

/// [`TrainInputs`] of a pipeline's denoiser: image batches are encoded by its frozen VAE (or
/// taken as pixels) and text encoders on the inner, gradient-free backend; cached features go
/// straight in. Nouns get exact token positions from its tokenizer. Validation images are
/// rendered with diffusers' default guidance.
///
/// The latent is a posterior sample (`config.sample_posterior`, diffusers' `latent_dist.sample()`
/// in its training scripts) drawn from the device RNG the trainer seeds per step, or the
/// posterior mean.
pub(crate) fn pipeline_train_batch<B, P>(
    pipeline: &P,
    batch: &Batch,
    config: &TrainConfig,
    device: &B::Device,
) -> Result<TrainBatch<B>>
where
    B: AutodiffBackend,
    P: TrainingPipeline<B::InnerBackend>,
{
    if matches!(batch.features, BatchFeatures::Cached { .. }) {
        return batch.train_batch_with(device, &pipeline.word_tokens(config.ctcal.noun_tokens));
    }
    let latents = image_latents(pipeline, batch, config, device)?;
    let captions: Vec<&str> = batch.captions.iter().map(String::as_str).collect();
    let (cond, _) = pipeline.encode_prompts_for_training(&captions)?;
    // On the peer's device when the pipeline lives on another (a data-parallel run sharing
    // one pipeline); a no-op otherwise.
    let on_device = |t: Tensor<B::InnerBackend, 2>| Tensor::from_inner(t).to_device(device);
    let cond = TextCond {
        hidden: Tensor::from_inner(cond.hidden).to_device(device),
        pooled: cond.pooled.map(on_device),
    };
    with_nouns(pipeline, batch, config, latents, cond)
}

/// The denoiser's input for an image batch on `device`: its pixels through the pipeline's
/// frozen VAE on the inner backend ([`TrainingPipeline::encode_images`]).
pub(crate) fn image_latents<B, P>(
    pipeline: &P,
    batch: &Batch,
    config: &TrainConfig,
    device: &B::Device,
) -> Result<Tensor<B, 4>>
where
    B: AutodiffBackend,
    P: TrainingPipeline<B::InnerBackend>,
{
    let pixels = batch.pixels::<B::InnerBackend>(device)?;
    let latents = pipeline.encode_images(pixels, config.sample_posterior)?;
    Ok(Tensor::from_inner(latents).to_device(device))
}

/// A step's inputs from `latents` and `cond`, each noun of `batch` placed on its token
/// positions (from the segments `config.ctcal.noun_tokens` names) within `cond`'s length.
pub(crate) fn with_nouns<B, P>(
    pipeline: &P,
    batch: &Batch,
    config: &TrainConfig,
    latents: Tensor<B, 4>,
    cond: TextCond<B>,
) -> Result<TrainBatch<B>>
where
    B: AutodiffBackend,
    P: TrainingPipeline<B::InnerBackend>,
{
    let tokens = cond.hidden.dims()[1];
    let word_tokens = pipeline.word_tokens(config.ctcal.noun_tokens);
    let nouns = batch.checked_noun_groups(&word_tokens, tokens)?;
    Ok(TrainBatch {
        latents,
        cond,
        nouns,
        teacher: None,
    })
}

/// [`TrainInputs::check_caption`] of a pipeline: the caption encodes, and each noun's token
/// positions (from the segments `config.ctcal.noun_tokens` names) lie within the tokenizers'
/// lengths.
pub(crate) fn pipeline_check_caption<B: Backend, P: TrainingPipeline<B>>(
    pipeline: &P,
    caption: &str,
    nouns: &Nouns,
    config: &TrainConfig,
) -> Result<()> {
    let positions = pipeline.caption_positions(caption)?;
    nouns
        .groups_with(caption, &pipeline.word_tokens(config.ctcal.noun_tokens))?
        .check_within(positions)
}

/// Validation images of `pipeline` with `denoiser` in place of its own, in `[0, 1]`.
pub(crate) fn pipeline_render<B: Backend, P: TrainingPipeline<B>>(
    pipeline: &P,
    denoiser: &P::Denoiser,
    prompts: &[&str],
    steps: usize,
    seed: u64,
) -> Result<Tensor<B, 4>> {
    let config = GenerateConfig::new().with_steps(steps).with_seed(seed);
    Ok(pipeline.render(denoiser, prompts, &config)?.images)
}

/// Implements [`TrainInputs`] for a pipeline type through [`pipeline_train_batch`] and
/// [`pipeline_render`].
macro_rules! train_inputs_for_pipeline {
    ($pipeline:ident, $denoiser:ident) => {
        impl<B> TrainInputs<B, $denoiser<B>> for $pipeline<B::InnerBackend>
        where
            B: AutodiffAttentionBackend,
        {
            fn train_batch(
                &self,
                _model: &$denoiser<B>,
                batch: &Batch,
                config: &TrainConfig,
                device: &B::Device,
            ) -> Result<TrainBatch<B>> {
                pipeline_train_batch(self, batch, config, device)
            }

            fn check_caption(
                &self,
                caption: &str,
                nouns: &Nouns,
                config: &TrainConfig,
            ) -> Result<()> {
                pipeline_check_caption(self, caption, nouns, config)
            }

            fn render(
                &self,
                model: &$denoiser<B::InnerBackend>,
                prompts: &[&str],
                steps: usize,
                seed: u64,
            ) -> Result<Tensor<B::InnerBackend, 4>> {
                pipeline_render(self, model, prompts, steps, seed)
            }
        }
    };
}

train_inputs_for_pipeline!(StableDiffusion, UNet2DConditionModel);
train_inputs_for_pipeline!(StableDiffusion3, SD3Transformer2DModel);
