//! The shapes models: tiny text-to-image models (a word-level CLIP-style text encoder and SD
//! 2.1's UNet or SD 3's MMDiT in pixel space, 32x32 RGB) that the shapes benchmark (`shapes/`
//! in the repository) trains from scratch on captioned pictures of coloured circles, squares
//! and triangles. Two of them ship in `weights/shapes-unet` and `weights/shapes-mmdit`; they are
//! the training examples' embedded default, so the crate fine-tunes a model whose maps mean
//! something on any CPU in about a minute.
//!
//! - [`ShapesModel`] / [`ShapesModelConfig`]: the model and its folder (`base_config.json`,
//!   `base.safetensors`).
//! - [`ShapesArch`]: what differs between the two denoisers (schedule, CTCal defaults, LoRA
//!   targets, sampler).
//! - [`ShapesPipeline`]: the frozen text side around a denoiser being fine-tuned, as a
//!   [`TrainingPipeline`](super::TrainingPipeline).
//! - [`ShapesModelInputs`]: training a whole model, text encoder included.

mod arch;
mod model;
mod pipeline;
mod training;
mod vocab;

pub use arch::{SHAPES_MMDIT_MAP_BLOCK, ShapesArch, flow_euler, linear_sigmas};
pub use model::{
    ShapesDenoiser, ShapesDenoiserConfig, ShapesModel, ShapesModelConfig, load_shapes_model,
};
pub use pipeline::{ShapesDenoiserPart, ShapesPipeline, is_shapes_model, load_shapes_pipeline};
pub use training::ShapesModelInputs;
pub use vocab::{SEQ_LEN, Vocab, WORDS};

#[cfg(all(test, feature = "ndarray"))]
mod tests;
