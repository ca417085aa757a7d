//! What a [`Trainer`](super::Trainer) needs besides the data: the module it updates
//! ([`Trainable`]) and the frozen side around it that turns loaded batches into step inputs and
//! renders validation images ([`TrainInputs`]).
//!
//! The pipelines implement [`TrainInputs`] for their denoisers (their frozen VAE, tokenizers and
//! text encoders encode images and captions; cached features go straight in). A module that
//! trains its own text encoder computes the conditioning from the module it is handed, so the
//! gradient reaches the encoder.

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use super::TrainConfig;
use crate::calibration::TrainBatch;
use crate::data::Batch;
use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::lora::LoraTarget;
use crate::mmdit::SD3Transformer2DModel;
use crate::nouns::{Nouns, WordTokens};
use crate::unet::UNet2DConditionModel;

/// A module a [`Trainer`](super::Trainer) updates: a denoiser, or a denoiser with the text
/// encoder trained beside it.
///
/// The CTCal step runs [`denoiser`](Self::denoiser); the optimiser updates every trainable
/// parameter of the whole module; [`LoraTarget`] lets the trainer attach adapters to it.
///
/// A module that trains text encoders beside its denoiser sets
/// [`TRAINS_TEXT_ENCODER`](Self::TRAINS_TEXT_ENCODER) and hands their gradients over in
/// [`take_text_encoder_grads`](Self::take_text_encoder_grads): they step with an AdamW of
/// their own at [`TrainConfig::text_encoder_lr`] (diffusers' `--text_encoder_lr`), whose state
/// checkpoints keep in `optimizer_text.mpk`.
pub trait Trainable<B: AutodiffBackend>: AutodiffModule<B> + LoraTarget<B> + Clone {
    /// The denoiser inside (the module itself for a plain UNet or MMDiT).
    type Denoiser: Denoiser<B> + AutodiffModule<B, InnerModule: Denoiser<B::InnerBackend>>;

    /// Whether text encoders train beside the denoiser, at their own learning rate.
    const TRAINS_TEXT_ENCODER: bool = false;

    /// The denoiser the step runs.
    fn denoiser(&self) -> &Self::Denoiser;

    /// Takes the text encoders' gradients out of `grads` (the whole module's, after clipping),
    /// leaving the denoiser's; empty for a module without text encoders.
    fn take_text_encoder_grads(&self, grads: &mut GradientsParams) -> GradientsParams {
        let _ = grads;
        GradientsParams::new()
    }
}

impl<B> Trainable<B> for UNet2DConditionModel<B>
where
    B: AutodiffBackend + crate::attention::AttentionBackend,
    B::InnerBackend: crate::attention::AttentionBackend,
{
    type Denoiser = Self;
    fn denoiser(&self) -> &Self {
        self
    }
}

impl<B> Trainable<B> for SD3Transformer2DModel<B>
where
    B: AutodiffBackend + crate::attention::AttentionBackend,
    B::InnerBackend: crate::attention::AttentionBackend,
{
    type Denoiser = Self;
    fn denoiser(&self) -> &Self {
        self
    }
}

/// The side of a training run that is not trained: it turns each loaded [`Batch`] into the
/// inputs of a step and renders validation images with the module being trained.
///
/// Randomness (a VAE posterior sample, say) must come from the device RNG, which the trainer
/// seeds from `(seed, step, micro-batch, peer)` before each [`train_batch`](Self::train_batch)
/// call and holds for the call, so a resumed run draws what an uninterrupted one would.
pub trait TrainInputs<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// The step inputs of `batch` on `device`: latents (or pixels), conditioning and noun
    /// positions. `model` is the module as it is being trained (a compute copy under mixed
    /// precision), for conditioning that its own text encoder computes.
    fn train_batch(
        &self,
        model: &M,
        batch: &Batch,
        config: &TrainConfig,
        device: &B::Device,
    ) -> Result<TrainBatch<B>>;

    /// Checks one caption of the data before the first step: that the text side can encode
    /// it and that each of its `nouns` lands on token positions the conditioning has (under
    /// the run's `config`, which says which text segments carry nouns). An error says what is
    /// wrong (the trainer adds the file and line). By default nothing is checked (and a bad
    /// caption stops the run at the step that meets it).
    fn check_caption(&self, caption: &str, nouns: &Nouns, config: &TrainConfig) -> Result<()> {
        let _ = (caption, nouns, config);
        Ok(())
    }

    /// Images `[n, 3, h, w]` in `[0, 1]` for `prompts`, sampled in `steps` steps from `seed`
    /// with `model` (the module as trained so far, without its graph).
    fn render(
        &self,
        model: &M::InnerModule,
        prompts: &[&str],
        steps: usize,
        seed: u64,
    ) -> Result<Tensor<B::InnerBackend, 4>>;
}

/// Cached features (latents and text embeddings computed beforehand) with no pipeline around
/// the module: `W` places caption words on token positions (a tokenizer, or
/// [`CountedTokens`](crate::nouns::CountedTokens)). Nothing renders validation images.
#[derive(Debug, Clone, Copy)]
pub struct CachedInputs<W>(pub W);

impl<B: AutodiffBackend, M: AutodiffModule<B>, W: WordTokens> TrainInputs<B, M>
    for CachedInputs<W>
{
    fn train_batch(
        &self,
        _model: &M,
        batch: &Batch,
        _config: &TrainConfig,
        device: &B::Device,
    ) -> Result<TrainBatch<B>> {
        batch.train_batch_with(device, &self.0)
    }

    /// The nouns are found among the caption's words (their positions are checked against the
    /// cached text's length when a batch is built).
    fn check_caption(&self, caption: &str, nouns: &Nouns, _config: &TrainConfig) -> Result<()> {
        nouns.groups_with(caption, &self.0).map(drop)
    }

    fn render(
        &self,
        _model: &M::InnerModule,
        _prompts: &[&str],
        _steps: usize,
        _seed: u64,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        Err(Error::Config(
            "validation images need a pipeline; cached features have none".into(),
        ))
    }
}
