//! The compositional shapes benchmark of `ctcal`: a seeded generator of small images of
//! coloured circles, squares and triangles with captions that bind colours, count and relate
//! them; per-noun ground-truth masks; a rule-based detector that checks a caption against an
//! image (a mini-CompBench); the agreement of a noun's attention map with its mask; and the
//! training runs (base-model pretraining, paired fine-tunes with and without CTCal) through the
//! library's [`Trainer`](ctcal::train::Trainer). The models themselves live in the library
//! ([`ctcal::pipeline::shapes`]), which ships two trained ones as its embedded default.
//!
//! ```
//! use ctcal_shapes::{Detector, ShapesConfig, Split, render, satisfies};
//! let config = ShapesConfig::new();
//! let scenes = config.generate(Split::Train, 4, 0).unwrap();
//! let image = render(&scenes[0], config.size);
//! let found = Detector::default().detect(&image.rgb, config.size);
//! assert!(satisfies(&scenes[0].claim, &found));
//! ```

mod agreement;
mod bench;
mod data;
mod detect;
mod generate;
mod levels;
mod measure;
mod oracle;
mod render;
mod sample;
mod scene;
mod stats;
mod write;

pub use agreement::{Agreement, agreement};
pub use bench::{
    TrainRun, compbench, compbench_outcomes, compbench_shares, heldout_loss, train_shapes,
};
pub use data::{ShapesBatch, ShapesSet};
pub use detect::{Detection, Detector, satisfies};
pub use generate::{ShapesConfig, Split};
pub use levels::ArchLevels;
pub use measure::{
    AgreementProbe, LevelAgreement, agreement_by_level, level_summaries, map_agreements,
};
pub use oracle::{OracleInputs, oracle_maps, pool_mask};
pub use render::{Rendered, contains, render};
pub use sample::sample_images;
pub use scene::{BACKGROUND, Claim, Colour, Object, Relation, Scene, Shape};
pub use stats::{McNemar, PairedDiff, mcnemar, paired_bootstrap};
pub use write::{ShapesRow, read_rows, write_dataset};

#[cfg(test)]
mod tests;
