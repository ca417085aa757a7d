//! A shapes model as a [`TrainingPipeline`], so the training examples fine-tune the trained
//! shapes models (their embedded default) through the same [`Trainer`](crate::train::Trainer)
//! as a diffusers pipeline: the
//! word-level text encoder stays frozen, images are the denoiser's input as they are (pixel
//! space, no VAE), and validation images come from the architecture's sampler.

use std::marker::PhantomData;
use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, backend::Backend};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::arch::ShapesArch;
use super::model::{CONFIG, ShapesDenoiser, ShapesModel, ShapesModelConfig, encode_ids};
use super::vocab::{SEQ_LEN, Vocab};
use crate::attention::AttentionBackend;
use crate::denoiser::{Denoiser, TextCond};
use crate::error::{Error, Result};
use crate::mmdit::SD3Transformer2DModel;
use crate::nn::normal_tensor;
use crate::nouns::{NounTokens, WordTokens};
use crate::pipeline::{GenerateConfig, Generated, TrainingPipeline};
use crate::text::ClipTextModel;
use crate::unet::UNet2DConditionModel;

/// The frozen half of a shapes model (text encoder, vocabulary, sampler) for a denoiser of
/// type `D` (the UNet or the MMDiT inside the model) trained elsewhere.
#[derive(Debug)]
pub struct ShapesPipeline<B: Backend, D> {
    /// The model's text encoder.
    pub text: ClipTextModel<B>,
    /// The word vocabulary its ids come from.
    pub vocab: Vocab,
    /// The denoiser's family: its sampler and noise schedule.
    pub arch: ShapesArch,
    /// The model's config (written back with a fully fine-tuned denoiser).
    pub config: ShapesModelConfig,
    /// Image side in pixels (the denoiser's `sample_size`).
    pub size: usize,
    device: B::Device,
    denoiser: PhantomData<D>,
}

/// A denoiser that a shapes model can hold: the UNet, the MMDiT, or either
/// ([`ShapesDenoiser`]).
pub trait ShapesDenoiserPart<B: Backend>: Sized {
    /// The architecture this type is (`None`: either).
    const ARCH: Option<ShapesArch>;
    /// Takes this type's model out of `denoiser`, or says which one it holds.
    fn take(denoiser: ShapesDenoiser<B>) -> Result<Self>;
    /// Wraps the model back.
    fn wrap(self) -> ShapesDenoiser<B>;
}

impl<B: Backend> ShapesDenoiserPart<B> for ShapesDenoiser<B> {
    const ARCH: Option<ShapesArch> = None;
    fn take(denoiser: ShapesDenoiser<B>) -> Result<Self> {
        Ok(denoiser)
    }
    fn wrap(self) -> ShapesDenoiser<B> {
        self
    }
}

impl<B: Backend> ShapesDenoiserPart<B> for UNet2DConditionModel<B> {
    const ARCH: Option<ShapesArch> = Some(ShapesArch::Unet);
    fn take(denoiser: ShapesDenoiser<B>) -> Result<Self> {
        match denoiser {
            ShapesDenoiser::Unet(m) => Ok(m),
            other => Err(wrong_arch(ShapesArch::Unet, other.arch())),
        }
    }
    fn wrap(self) -> ShapesDenoiser<B> {
        ShapesDenoiser::Unet(self)
    }
}

impl<B: Backend> ShapesDenoiserPart<B> for SD3Transformer2DModel<B> {
    const ARCH: Option<ShapesArch> = Some(ShapesArch::Mmdit);
    fn take(denoiser: ShapesDenoiser<B>) -> Result<Self> {
        match denoiser {
            ShapesDenoiser::Mmdit(m) => Ok(m),
            other => Err(wrong_arch(ShapesArch::Mmdit, other.arch())),
        }
    }
    fn wrap(self) -> ShapesDenoiser<B> {
        ShapesDenoiser::Mmdit(self)
    }
}

fn wrong_arch(want: ShapesArch, got: ShapesArch) -> Error {
    Error::Config(format!(
        "shapes model: wanted its {want} but it holds a {got}"
    ))
}

/// Whether `dir` holds a shapes model (`base_config.json`) rather than a diffusers pipeline.
pub fn is_shapes_model(dir: &Path) -> bool {
    dir.join(CONFIG).is_file()
}

/// Loads the shapes model in `dir` (see [`load_shapes_model`](super::load_shapes_model)) split for training: the frozen
/// pipeline on `B`'s inner backend and the denoiser, which must be a `D`, on `B`.
#[allow(clippy::type_complexity)]
pub fn load_shapes_pipeline<B, D>(
    dir: &Path,
    device: &B::Device,
) -> Result<(ShapesPipeline<B::InnerBackend, D::InnerModule>, D)>
where
    B: AutodiffBackend,
    D: ShapesDenoiserPart<B> + AutodiffModule<B>,
{
    let config = ShapesModelConfig::read(&dir.join(CONFIG))?;
    if let Some(arch) = D::ARCH.filter(|&a| a != config.arch()) {
        return Err(Error::Config(format!(
            "{}: a shapes {} model, not a {arch}",
            dir.display(),
            config.arch(),
        )));
    }
    let model: ShapesModel<B> = config.load_weights(dir, device)?;
    let pipeline = ShapesPipeline::new(model.text.valid(), config, device.clone());
    Ok((pipeline, D::take(model.denoiser)?))
}

impl<B: Backend, D> ShapesPipeline<B, D> {
    /// The pipeline around a denoiser of the model `config` describes, with its text encoder
    /// `text` and the shapes vocabulary.
    pub fn new(text: ClipTextModel<B>, config: ShapesModelConfig, device: B::Device) -> Self {
        Self {
            text,
            vocab: Vocab::default(),
            arch: config.arch(),
            size: config.sample_size(),
            config,
            device,
            denoiser: PhantomData,
        }
    }
}

impl<B: AttentionBackend, D> ShapesPipeline<B, D> {
    /// The caption's words as the vocabulary spells them (the tagger's words: lower case,
    /// punctuation trimmed).
    fn normalise(caption: &str) -> String {
        crate::nouns::words(caption).join(" ")
    }

    /// Conditioning for `prompts`; an unknown word is an error naming it.
    pub fn encode(&self, prompts: &[&str]) -> Result<TextCond<B>> {
        let ids = prompts
            .iter()
            .map(|p| self.vocab.encode(&Self::normalise(p)))
            .collect::<Result<Vec<_>>>()?;
        encode_ids(&self.text, &ids, &self.device)
    }
}

impl<B: AttentionBackend, D: ShapesDenoiserPart<B>> ShapesPipeline<B, D> {
    /// The whole model with `denoiser` in place (for saving a full fine-tune).
    pub fn model(&self, denoiser: D) -> ShapesModel<B> {
        ShapesModel {
            text: self.text.clone(),
            denoiser: denoiser.wrap(),
        }
    }
}

impl<B: AttentionBackend, D: Denoiser<B>> TrainingPipeline<B> for ShapesPipeline<B, D> {
    type Denoiser = D;

    /// Seeded standard-normal pixels (the host RNG, as every pipeline), the architecture's
    /// sampler with guidance against the empty caption; images in `[0, 1]`.
    fn render(
        &self,
        denoiser: &D,
        prompts: &[&str],
        config: &GenerateConfig,
    ) -> Result<Generated<B>> {
        let (h, w) = (
            config.height.unwrap_or(self.size),
            config.width.unwrap_or(self.size),
        );
        let cond = self.encode(prompts)?;
        let uncond = self.encode(&vec![""; prompts.len()])?;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let noise = normal_tensor(&mut rng, [prompts.len(), 3, h, w], &self.device);
        let x = self.arch.sample(
            denoiser,
            noise,
            &cond,
            &uncond,
            config.steps,
            config.guidance_scale,
        )?;
        Ok(Generated {
            images: x.clone().add_scalar(1.0).div_scalar(2.0).clamp(0.0, 1.0),
            latents: x,
            truncated: Vec::new(),
        })
    }

    fn encode_prompts_for_training(&self, prompts: &[&str]) -> Result<(TextCond<B>, Vec<String>)> {
        Ok((self.encode(prompts)?, Vec::new()))
    }

    /// One word-level text encoder: its positions whatever `nouns` says.
    fn word_tokens(&self, _nouns: NounTokens) -> Box<dyn WordTokens + '_> {
        Box::new(&self.vocab)
    }

    /// The word vocabulary rejects unknown words and captions over its length.
    fn caption_positions(&self, caption: &str) -> Result<usize> {
        self.vocab.encode(&Self::normalise(caption))?;
        Ok(SEQ_LEN)
    }

    fn encode_images(&self, pixels: Tensor<B, 4>, _sample_posterior: bool) -> Result<Tensor<B, 4>> {
        let [_, c, h, w] = pixels.dims();
        if c != 3 || h != self.size || w != self.size {
            return Err(Error::Input(format!(
                "shapes {} model: images of 3x{}x{} pixels, got {c}x{h}x{w} (pass --resolution {})",
                self.arch, self.size, self.size, self.size
            )));
        }
        Ok(pixels)
    }
}

impl WordTokens for Vocab {
    /// Word `i` is token `i + 1` (after the begin token); every word must be in the
    /// vocabulary.
    fn word_tokens(&self, caption: &str) -> Result<Vec<Vec<usize>>> {
        let words = crate::nouns::words(caption);
        self.encode(&words.join(" "))?;
        Ok((0..words.len()).map(|i| vec![i + 1]).collect())
    }
}
