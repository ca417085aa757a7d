//! Whole diffusers pipelines: the folder layout (`model_index.json`), loading every component
//! through the crate's one weight loader, prompt encoding, image generation, and the frozen
//! encoders that let training read plain images and captions.

pub mod index;

pub use index::{Component, PipelineFolder};
