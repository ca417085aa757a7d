//! How a loaded [`Batch`] becomes the model inputs of a training step.
//!
//! Cached features already hold latents and text embeddings: all that is left is to place
//! the caption nouns on token positions, which any `Fn(&str) -> usize` (a word's token count)
//! does. Image folders need a VAE and text encoders first: the pipeline types implement
//! [`BatchInputs`] with their frozen encoders.

use burn::tensor::backend::Backend;

use crate::ctcal::TrainBatch;
use crate::data::Batch;
use crate::error::Result;

/// Turns a loaded batch into the [`TrainBatch`] of one training step on `device`.
///
/// Randomness (a VAE posterior sample, say) must come from the device RNG, which the trainer
/// seeds from `(seed, step)` before every step, so a resumed run draws what an uninterrupted
/// one would.
pub trait BatchInputs<B: Backend> {
    /// The step inputs of `batch` on `device`.
    fn train_batch(&self, batch: &Batch, device: &B::Device) -> Result<TrainBatch<B>>;
}

/// Cached features: `self` gives a lower-cased word's number of text tokens, which places
/// nouns given as words (see [`crate::data::Nouns::groups`]).
impl<B: Backend, F: Fn(&str) -> usize> BatchInputs<B> for F {
    fn train_batch(&self, batch: &Batch, device: &B::Device) -> Result<TrainBatch<B>> {
        batch.train_batch(device, self)
    }
}

/// Cached features whose nouns a real tokenizer places ([`crate::text::ClipTokenizer`] gives
/// exact positions, punctuation included).
#[derive(Clone, Copy)]
pub struct CachedInputs<'a>(pub &'a dyn crate::text::WordTokens);

impl<B: Backend> BatchInputs<B> for CachedInputs<'_> {
    fn train_batch(&self, batch: &Batch, device: &B::Device) -> Result<TrainBatch<B>> {
        batch.train_batch_with(device, self.0)
    }
}
