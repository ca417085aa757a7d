//! The loader's settings (a separate file: burn's `Config` derive needs `Result` unshadowed).

use burn::config::Config;

/// How batches are drawn and prefetched.
#[derive(Config, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffling seed.
    pub seed: u64,
    /// Leave out each epoch's tail too short for a full batch (training wants equal batches).
    #[config(default = true)]
    pub drop_last: bool,
    /// Batches the [`Loader`](super::Loader) keeps ready ahead of the consumer (0: each is
    /// built on demand, still on the loader's thread).
    #[config(default = 2)]
    pub prefetch: usize,
}
