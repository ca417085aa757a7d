//! # ctcal
//!
//! CTCal (Cross-Timestep Self-Calibration) fine-tuning of text-to-image diffusion models on
//! [burn](https://burn.dev): the model's own cross-attention maps at a small, low-noise timestep
//! supervise its maps at a large, noisy timestep, for the caption's noun tokens, added to the
//! diffusion loss with a timestep-aware weight. What the code implements of the method, and
//! which parts are the paper's and which ours, is in `docs/method.md`; how the modules layer
//! and one training step runs through them, in `docs/architecture.md` (both in the
//! repository).
//!
//! Layers, bottom to top (a module uses only those below it):
//! - [`error`], [`config`] (diffusers' JSON configs), [`precision`] (mixed-precision casts),
//!   [`backend`] (per-backend kernel choices), [`heap`] (an allocator opt-in for binaries);
//! - [`weights`] (diffusers safetensors in and out), [`hub`] (models by id from the Hugging Face
//!   cache), [`viz`] (PNG maps and plots),
//!   [`schedule`] (noise schedules, samplers), [`nouns`] (which tokens are nouns);
//! - [`nn`] (shared layers, `LoraLinear`), [`attention`] (the hook trait every model threads
//!   through its forward, the memory-efficient attention op);
//! - [`denoiser`] (the `Denoiser` contract), then the models: [`unet`] (SD 1.x/2.x
//!   `UNet2DConditionModel`), [`mmdit`] (SD 3 `SD3Transformer2DModel`), [`vae`]
//!   (`AutoencoderKL`), [`text`] (CLIP and T5 encoders and tokenizers);
//! - [`lora`] (adapters, PEFT export), [`calibration`] (the CTCal maps, loss and step),
//!   [`data`] (captioned samples, data order, loader);
//! - [`train`] (the `Trainer`), [`pipeline`] (diffusers pipelines, generation, the shapes
//!   models), [`launch`] (running on a backend chosen at run time).
//!
//! Every model is generic over `B: Backend`; the cargo features `ndarray` (default), `wgpu` and
//! `cuda` add backends without changing behaviour.
//!
//! Load a UNet from a diffusers folder and read its cross-attention maps through a hook:
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::Tensor;
//! use ctcal::attention::{AttentionKind, AttentionStore, SiteFilter};
//! use ctcal::unet::{UNet2DConditionConfig, UNet2DConditionModel};
//!
//! let device = Default::default();
//! let dir = std::path::Path::new("weights/tiny-sd21/unet");
//! let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json"))?;
//! let (unet, _report) = ctcal::weights::load_module(config.init::<NdArray>(&device), dir, None)?;
//! let unet: UNet2DConditionModel<NdArray> = unet;
//! let sample = Tensor::zeros([1, config.in_channels, 8, 8], &device);
//! let timesteps = Tensor::from_floats([500.0], &device);
//! let text = Tensor::zeros([1, 7, config.cross_attention_dim], &device);
//! let mut store = AttentionStore::new(SiteFilter::default().with_kinds([AttentionKind::Cross]));
//! let out = unet.forward_with_hook(sample, timesteps, text, &mut store);
//! assert_eq!(out.dims(), [1, config.out_channels, 8, 8]);
//! let maps = store.take();
//! assert!(!maps.is_empty());
//! assert_eq!(maps[0].probs.dims()[3], 7); // [batch, heads, queries, text tokens]
//! # Ok::<(), ctcal::Error>(())
//! ```
//!
//! One CTCal step ([`calibration::ctcal_step`]) and a whole run ([`train::Trainer`]) are shown
//! where they live.

#![warn(missing_docs)]

pub mod attention;
pub mod backend;
pub mod calibration;
pub mod config;
pub mod data;
pub mod denoiser;
pub mod error;
pub mod heap;
pub mod hub;
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
