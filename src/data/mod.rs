//! Training data: captioned samples from a folder, shuffled by seed, batched, prefetched.
//!
//! - [`metadata`]: `metadata.jsonl` (diffusers' image-folder convention: `file_name`, `text`,
//!   optional `nouns` and `noun_tokens`), with bad rows reported by line and skipped or fatal
//!   by [`BadRowPolicy`].
//! - [`ImageFolder`]: images resized and centre-cropped to a square, as `[3, r, r]` in `[-1, 1]`.
//! - [`CachedFeatures`]: precomputed VAE latents and text embeddings, one safetensors file per
//!   sample, so training runs without a text encoder or VAE in the crate.
//! - [`TrainingData`]: either kind, told apart by the metadata's first row.
//! - [`order`]: the data order, a pure function of `(seed, epoch)`, and the [`DataCursor`]
//!   a checkpoint saves so a resumed run sees exactly the batches an uninterrupted one would.
//! - [`DataFingerprint`]: what the data was, kept in checkpoints so a resume on changed data
//!   is refused.
//! - [`Subset`]: some samples of another dataset (what is left after checks).
//! - [`Loader`]: a background thread that builds [`Batch`]es ahead of the training step.
//!
//! Samples and batches stay on the CPU as `f32` ([`HostTensor`]); a [`Batch`] becomes burn
//! tensors on the training device with [`Batch::train_batch`] or [`Batch::pixels`].

mod batch;
mod cached;
mod config;
mod fingerprint;
mod folder;
mod image_folder;
mod loader;
pub mod metadata;
pub mod order;
mod sample;
mod subset;
#[cfg(test)]
pub(crate) mod test_util;

pub use batch::{Batch, BatchFeatures};
pub use cached::{CachedFeatures, FeatureShapes, write_cached_sample};
pub use config::LoaderConfig;
pub use fingerprint::DataFingerprint;
pub use folder::TrainingData;
pub use image_folder::{ImageFolder, MAX_ASPECT_RATIO, MAX_IMAGE_SIDE, load_image, preprocess};
pub use loader::{Batches, Loader};
pub use metadata::{BadRow, BadRowPolicy, BadRows, Metadata, MetadataRow};
pub use order::{BatchOrder, DataCursor, epoch_order};
pub use sample::{Features, HostTensor, Sample};
pub use subset::Subset;

/// A finite, indexable set of samples the [`Loader`] draws from.
///
/// `Send + Sync` because the loader reads it from its own thread.
pub trait Dataset: Send + Sync {
    /// Number of samples (the good rows of the metadata).
    fn len(&self) -> usize;

    /// Whether there is no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What loading does with a sample that turns out bad (an unreadable file): the policy
    /// the dataset was opened with.
    fn policy(&self) -> BadRowPolicy;

    /// Reads and decodes sample `index` (`< len()`); a file that cannot be read or decoded is
    /// a [`BadRow`] naming its metadata line.
    fn load(&self, index: usize) -> std::result::Result<Sample, BadRow>;

    /// The file the samples are listed in (`metadata.jsonl`), for messages about a row;
    /// `None` for data made in memory.
    fn source(&self) -> Option<&std::path::Path> {
        None
    }

    /// The metadata row of sample `index` (`< len()`), read without loading the sample, for
    /// checks before training; `None` for data made in memory.
    fn row(&self, index: usize) -> Option<&MetadataRow> {
        let _ = index;
        None
    }

    /// Whether the samples are cached features (latents and text embeddings computed
    /// beforehand) rather than images and captions: a run that encodes captions itself
    /// (caption dropout, text encoders being trained) refuses them before the first step.
    fn cached_features(&self) -> bool {
        false
    }

    /// The rows left out when the dataset was opened (bad JSON, missing files, image headers
    /// over the limits), for the run to report; none by default.
    fn skipped(&self) -> BadRows {
        BadRows::default()
    }
}
