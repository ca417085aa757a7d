//! Whole diffusers pipelines: the folder layout (`model_index.json`), loading every component
//! through the crate's one weight loader, prompt encoding, image generation, and the frozen
//! encoders that let training read plain images and captions.
//!
//! - [`PipelineFolder`]: `model_index.json` and the component folders.
//! - [`StableDiffusion`] (SD 1.x/2.x) and [`StableDiffusion3`]: load, encode prompts,
//!   [`generate`](StableDiffusion::generate) with classifier-free guidance ([`denoise`]).
//! - [`shapes`]: the small pixel-space models the training examples fine-tune by default.
//! - [`TrainingPipeline`]: what training needs of a pipeline; every one is the
//!   [`TrainInputs`](crate::train::TrainInputs) of its denoiser.

mod denoise;
pub mod index;
mod inputs;
mod sd21;
mod sd3;
pub mod shapes;
mod with_text;

pub use denoise::{
    GenerateConfig, Generated, decode, denoise, initial_latents, token_ids, truncated,
};
pub use index::{Component, PipelineFolder};
pub use inputs::{TrainingPipeline, vae_latents};
pub use sd3::{SD3_CLASSES, Sd3Encodings, StableDiffusion3};
pub use sd21::{SD_CLASSES, StableDiffusion};
pub use with_text::{SD3WithTextEncoders, UNetWithTextEncoder, with_text_encoder_targets};
