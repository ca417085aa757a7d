//! The shapes models under a [`Trainer`](crate::train::Trainer): fine-tuning a denoiser with
//! the frozen [`ShapesPipeline`] around it, or training a whole [`ShapesModel`] (text encoder
//! and denoiser together, from scratch) with [`ShapesModelInputs`].

use burn::module::{AutodiffModule, Module};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::model::{ShapesDenoiser, ShapesModel, ShapesModelConfig};
use super::pipeline::ShapesPipeline;
use super::vocab::{SEQ_LEN, Vocab};
use crate::attention::AutodiffAttentionBackend;
use crate::calibration::TrainBatch;
use crate::data::{Batch, BatchFeatures};
use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::lora::{LoraLinear, LoraTarget};
use crate::nouns::Nouns;
use crate::pipeline::inputs::{pipeline_check_caption, pipeline_render, pipeline_train_batch};
use crate::train::{TrainConfig, TrainInputs, Trainable};

impl<B: AutodiffAttentionBackend> Trainable<B> for ShapesDenoiser<B> {
    type Denoiser = Self;
    fn denoiser(&self) -> &Self {
        self
    }
}

impl<B: AutodiffAttentionBackend> Trainable<B> for ShapesModel<B> {
    type Denoiser = ShapesDenoiser<B>;
    fn denoiser(&self) -> &ShapesDenoiser<B> {
        &self.denoiser
    }
}

/// The denoiser's projections (the text encoder gets no adapters: a LoRA run on a whole shapes
/// model freezes the text encoder and adapts the denoiser).
impl<B: Backend> LoraTarget<B> for ShapesModel<B> {
    const PEFT_PREFIX: &'static str = <ShapesDenoiser<B> as LoraTarget<B>>::PEFT_PREFIX;

    fn map_lora(self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        Self {
            text: self.text,
            denoiser: self.denoiser.map_lora(f),
        }
    }

    fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        self.denoiser.visit_lora(f);
    }
}

/// Fine-tuning a shapes denoiser `D` (the UNet, the MMDiT, or [`ShapesDenoiser`]) with the
/// model's frozen text encoder.
impl<B, D> TrainInputs<B, D> for ShapesPipeline<B::InnerBackend, D::InnerModule>
where
    B: AutodiffAttentionBackend,
    D: AutodiffModule<B>,
    D::InnerModule: Denoiser<B::InnerBackend>,
{
    fn train_batch(
        &self,
        _model: &D,
        batch: &Batch,
        config: &TrainConfig,
        device: &B::Device,
    ) -> Result<TrainBatch<B>> {
        pipeline_train_batch(self, batch, config, device)
    }

    fn check_caption(&self, caption: &str, nouns: &Nouns, config: &TrainConfig) -> Result<()> {
        pipeline_check_caption(self, caption, nouns, config)
    }

    fn render(
        &self,
        model: &D::InnerModule,
        prompts: &[&str],
        steps: usize,
        seed: u64,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        pipeline_render(self, model, prompts, steps, seed)
    }
}

/// Training a whole [`ShapesModel`]: captions are encoded by the model's own text encoder
/// inside the step (so it trains too), images are its input as they are.
#[derive(Debug, Clone)]
pub struct ShapesModelInputs {
    /// The model's config (its image size and architecture, for validation images).
    pub config: ShapesModelConfig,
    /// The word vocabulary the ids come from.
    pub vocab: Vocab,
}

impl ShapesModelInputs {
    /// Inputs for a model of `config` with the shapes vocabulary.
    pub fn new(config: ShapesModelConfig) -> Self {
        Self {
            config,
            vocab: Vocab::default(),
        }
    }
}

impl<B: AutodiffAttentionBackend> TrainInputs<B, ShapesModel<B>> for ShapesModelInputs {
    fn train_batch(
        &self,
        model: &ShapesModel<B>,
        batch: &Batch,
        _config: &TrainConfig,
        device: &B::Device,
    ) -> Result<TrainBatch<B>> {
        if !matches!(batch.features, BatchFeatures::Pixels(_)) {
            return Err(Error::Config(
                "a shapes model trains on images (cached features hold another encoder's output)"
                    .into(),
            ));
        }
        let ids = batch
            .captions
            .iter()
            .map(|c| self.vocab.encode(&crate::nouns::words(c).join(" ")))
            .collect::<Result<Vec<_>>>()?;
        Ok(TrainBatch {
            latents: batch.pixels::<B>(device)?,
            cond: model.encode(&ids, device)?,
            nouns: batch.checked_noun_groups(&self.vocab, SEQ_LEN)?,
            teacher: None,
        })
    }

    /// The vocabulary encodes it; the nouns lie within its positions.
    fn check_caption(&self, caption: &str, nouns: &Nouns, _config: &TrainConfig) -> Result<()> {
        self.vocab.encode(&crate::nouns::words(caption).join(" "))?;
        nouns
            .groups_with(caption, &self.vocab)?
            .check_within(SEQ_LEN)
    }

    /// The pipeline's rendering with the model's own (trained) text encoder.
    fn render(
        &self,
        model: &ShapesModel<B::InnerBackend>,
        prompts: &[&str],
        steps: usize,
        seed: u64,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        let device = model
            .devices()
            .into_iter()
            .next()
            .ok_or_else(|| Error::Input("the shapes model has no parameters".into()))?;
        let pipeline = ShapesPipeline::<_, ShapesDenoiser<_>>::new(
            model.text.clone(),
            self.config.clone(),
            device,
        );
        pipeline_render(&pipeline, &model.denoiser, prompts, steps, seed)
    }
}
