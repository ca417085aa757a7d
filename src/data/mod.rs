//! Training data: captioned samples from a folder, shuffled by seed, batched, prefetched.
//!
//! - [`metadata`]: `metadata.jsonl` (diffusers' image-folder convention: `file_name`, `text`,
//!   optional `nouns` and `noun_tokens`), with bad rows reported by line and skipped or fatal
//!   by [`BadRowPolicy`].

pub mod metadata;
#[cfg(test)]
pub(crate) mod test_util;

pub use metadata::{BadRow, BadRowPolicy, BadRows, Metadata, MetadataRow};
