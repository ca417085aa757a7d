//! The compositional shapes benchmark's data and scoring (issue 7): a seeded generator of small
//! images of coloured circles, squares and triangles with captions that bind colours, count and
//! relate them; per-noun ground-truth masks; a rule-based detector that checks a caption against
//! an image (a mini-CompBench); and the agreement of a noun's attention map with its mask.
//!
//! ```
//! use ctcal::shapes::{Detector, ShapesConfig, Split, render, satisfies};
//! let config = ShapesConfig::new();
//! let scenes = config.generate(Split::Train, 4, 0).unwrap();
//! let image = render(&scenes[0], config.size);
//! let found = Detector::default().detect(&image.rgb, config.size);
//! assert!(satisfies(&scenes[0].claim, &found));
//! ```

mod agreement;
mod arch;
mod bench;
mod data;
mod detect;
mod generate;
mod measure;
mod model;
mod pipeline;
mod render;
mod sample;
mod scene;
mod vocab;
mod write;

pub use agreement::{Agreement, agreement};
pub use arch::{ShapesArch, flow_euler, linear_sigmas};
pub use bench::{TrainRun, compbench, heldout_loss, train_shapes};
pub use data::{ShapesBatch, ShapesSet};
pub use detect::{Detection, Detector, satisfies};
pub use generate::{ShapesConfig, Split};
pub use measure::{AgreementProbe, LevelAgreement, agreement_by_level};
pub use model::{
    ShapesDenoiser, ShapesDenoiserConfig, ShapesModel, ShapesModelConfig, load_shapes_model,
};
pub use pipeline::{ShapesDenoiserPart, ShapesPipeline, is_shapes_model, load_shapes_pipeline};
pub use render::{Rendered, contains, render};
pub use sample::sample_images;
pub use scene::{BACKGROUND, Claim, Colour, Object, Relation, Scene, Shape};
pub use vocab::{SEQ_LEN, Vocab};
pub use write::{ShapesRow, read_rows, write_dataset};

#[cfg(test)]
mod tests;
