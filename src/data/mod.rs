//! Training data: captioned samples from a folder, shuffled by seed, batched, prefetched.
//!
//! - [`metadata`]: `metadata.jsonl` (diffusers' image-folder convention: `file_name`, `text`,
//!   optional `nouns` and `noun_tokens`), with bad rows reported by line and skipped or fatal
//!   by [`BadRowPolicy`].
//! - [`sampler`]: the data order, a pure function of `(seed, epoch)`, and the [`DataCursor`]
//!   a checkpoint saves so a resumed run sees exactly the batches an uninterrupted one would.

pub mod metadata;
pub mod sampler;
#[cfg(test)]
pub(crate) mod test_util;

pub use metadata::{BadRow, BadRowPolicy, BadRows, Metadata, MetadataRow};
pub use sampler::{DataCursor, Sampler, epoch_order};
