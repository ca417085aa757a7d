//! # ctcal
//!
//! CTCal (Cross-Timestep Self-Calibration) fine-tuning of text-to-image diffusion models on
//! [burn](https://burn.dev): the model's own cross-attention maps at a small, low-noise timestep
//! supervise its maps at a large, noisy timestep, for the caption's noun tokens.
//!
//! - [`unet`]: the SD 1.x/2.x denoiser, diffusers' `UNet2DConditionModel`.
//! - [`attention`]: attention sites, the [`AttentionHook`](attention::AttentionHook) trait every
//!   model threads through its forward, and the [`AttentionStore`](attention::AttentionStore)
//!   hook.
//! - [`vae`]: the latent autoencoder of SD 2.1 and SD 3, diffusers' `AutoencoderKL`.
//! - [`weights`]: loading diffusers safetensors checkpoints by key name.
//! - [`text`]: the CLIP and T5 text encoders of SD 2.1 and SD 3 and their prompt embeddings.
//! - [`data`]: captioned training samples (image folders or cached latents and text
//!   embeddings), shuffled by seed, batched and prefetched, with a resumable cursor.
//! - [`text`]: the CLIP and T5 tokenizers of the SD 2.1 and SD 3 pipelines, with each
//!   caption word's token positions for exact noun groups.
//! - [`lora`]: low-rank adapters on the attention projections, frozen base weights, merging,
//!   and export/import in the diffusers/PEFT layout `pipe.load_lora_weights()` reads.
//!
//! Every model is generic over `B: Backend`; the cargo features `ndarray` (default), `wgpu` and
//! `cuda` add backends without changing behaviour.

#![warn(missing_docs)]

pub mod attention;
pub mod backend;
pub mod calibration;
pub mod config;
pub mod data;
pub mod denoiser;
pub mod error;
pub mod heap;
pub mod launch;
pub mod lora;
pub mod mmdit;
pub mod nn;
pub mod nouns;
pub mod pipeline;
pub mod precision;
pub mod schedule;
pub mod text;
pub mod train;
pub mod unet;
pub mod vae;
pub mod viz;
pub mod weights;

pub use error::{Error, Result};

/// The CPU backend unit tests run on: f64, so finite-difference checks are meaningful.
///
/// burn 0.21 keeps one default float dtype per device *type* for the whole process (the first
/// backend that touches the device fixes it), so `NdArray<f32>` and `NdArray<f64>` must not be
/// mixed in one test binary: every unit test uses this alias, the integration tests use f32.
#[cfg(all(test, feature = "ndarray"))]
pub(crate) type TestBackend = burn::backend::NdArray<f64>;
