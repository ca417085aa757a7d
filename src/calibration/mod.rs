//! CTCal: cross-timestep self-calibration of cross-attention maps.
//!
//! What is implemented, part by part, with the paper's statements and our choices marked, is in
//! the repository's `docs/method.md`. One training step runs the same model on the same
//! (latent, caption, noise) at a small teacher timestep without gradient and at the student
//! timestep with an [`AttentionStore`](crate::attention::AttentionStore), turns both sets of
//! maps into one map per noun ([`maps`]), and adds the alignment [`loss`] to the diffusion loss
//! with the weight `w(t_stu)` ([`step`]).
//!
//! Every weight, `tau`, the layer selection and the teacher rule are fields of
//! [`CtcalConfig`]; the defaults are project defaults, not the paper's facts, except where
//! `docs/method.md` marks them.
//!
//! One step on a tiny UNet, then the gradient:
//!
//! ```
//! use burn::backend::{Autodiff, NdArray};
//! use burn::tensor::{Distribution, Tensor};
//! use ctcal::calibration::{CtcalConfig, MapAutoEncoderConfig, StepDraw, TrainBatch, ctcal_step};
//! use ctcal::denoiser::TextCond;
//! use ctcal::nouns::NounGroups;
//! use ctcal::schedule::{DdpmConfig, Schedule};
//! use ctcal::unet::UNet2DConditionConfig;
//!
//! type B = Autodiff<NdArray>;
//! let device = Default::default();
//! let unet = UNet2DConditionConfig::tiny().init::<B>(&device);
//! let ae = MapAutoEncoderConfig::new().init::<B>(&device);
//! let config = CtcalConfig::sd21().with_layer_downscales(vec![1, 2]).with_map_downscale(2);
//! let normal = Distribution::Normal(0.0, 1.0);
//! let batch = TrainBatch {
//!     latents: Tensor::random([2, 4, 8, 8], normal, &device),
//!     cond: TextCond { hidden: Tensor::random([2, 5, 32], normal, &device), pooled: None },
//!     // Sample 0: nouns at tokens 1 and 2-3; sample 1: one noun at token 4.
//!     nouns: vec![NounGroups(vec![vec![1], vec![2, 3]]), NounGroups(vec![vec![4]])],
//!     teacher: None,
//! };
//! let draw = StepDraw {
//!     noise: Tensor::random([2, 4, 8, 8], normal, &device),
//!     student: vec![700.0, 300.0],
//!     teacher: vec![0.0, 0.0],
//! };
//! let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
//! let out = ctcal_step(&unet, &ae, &batch, &draw, &schedule, &config)?;
//! assert!(out.parts.ctcal > 0.0 && out.parts.diffusion > 0.0);
//! let _gradients = out.loss.backward();
//! # Ok::<(), ctcal::Error>(())
//! ```

mod autoencoder;
mod levels;
pub mod loss;
pub mod maps;
pub mod step;

pub use autoencoder::{MapAutoEncoder, MapAutoEncoderConfig};
pub use levels::TeacherRule;
pub use loss::{CtcalLoss, ctcal_loss};
pub use maps::{noun_maps, token_maps};
pub use step::{
    LossParts, StepDraw, StepOutput, TrainBatch, ctcal_step, student_loss, teacher_maps,
};

use burn::config::Config;

use crate::attention::{AttentionKind, SiteFilter};
use crate::nouns::NounTokens;

/// Every setting of the CTCal objective.
#[derive(Config, Debug, PartialEq)]
pub struct CtcalConfig {
    /// Weight of the CTCal loss against the diffusion loss (`lambda_ctcal`).
    #[config(default = 1.0)]
    pub lambda_ctcal: f64,
    /// Pixel term weight (`l1`).
    #[config(default = 1.0)]
    pub pixel_weight: f64,
    /// Semantic (auto-encoder code) term weight (`l2`).
    #[config(default = 1.0)]
    pub semantic_weight: f64,
    /// Auto-encoder reconstruction term weight (`l3`).
    #[config(default = 1.0)]
    pub recon_weight: f64,
    /// Subject-balancing term weight (`l4`).
    #[config(default = 0.1)]
    pub balance_weight: f64,
    /// Margin below the strongest subject's peak that is not penalised (`tau`), as a fraction of
    /// that peak: a subject whose peak reaches `(1 - tau)` of the strongest one's is left alone.
    #[config(default = 0.05)]
    pub tau: f64,
    /// The common map grid is the latent grid divided by this (4: 16x16 for 64x64 latents).
    #[config(default = 4)]
    pub map_downscale: usize,
    /// Supervised layers by resolution: their query grid is the latent grid divided by one of
    /// these (empty: every resolution).
    #[config(default = "vec![2, 4]")]
    pub layer_downscales: Vec<usize>,
    /// Supervised layers by diffusers path (empty: every path).
    #[config(default = "Vec::new()")]
    pub layer_paths: Vec<String>,
    /// How the teacher level is chosen.
    #[config(default = "TeacherRule::FixedTimestep(0)")]
    pub teacher: TeacherRule,
    /// Min-SNR-gamma weighting of the diffusion loss (DDPM only; `None`: uniform).
    pub min_snr_gamma: Option<f64>,
    /// Which segments of a joint text sequence give a noun its tokens (SD 3: CLIP and T5, or
    /// CLIP only); models with one text encoder have one segment.
    #[config(default = "NounTokens::ClipAndT5")]
    pub noun_tokens: NounTokens,
    /// The map auto-encoder.
    #[config(default = "MapAutoEncoderConfig::new()")]
    pub autoencoder: MapAutoEncoderConfig,
}

impl CtcalConfig {
    /// SD 2.1 defaults: teacher at t = 0, cross-attention layers at 1/2 and 1/4 of the latent
    /// grid, maps compared at 1/4.
    pub fn sd21() -> Self {
        Self::new()
    }

    /// SD 3 defaults: teacher drawn below the student's sigma, every joint block, maps compared
    /// on the patch grid (1/2 of the latent grid).
    pub fn sd3() -> Self {
        Self::new()
            .with_teacher(TeacherRule::BelowStudent)
            .with_layer_downscales(Vec::new())
            .with_map_downscale(2)
    }

    /// The attention sites this config supervises for a model whose maps are of `kind`.
    pub fn site_filter(&self, kind: AttentionKind) -> SiteFilter {
        SiteFilter::default()
            .with_kinds([kind])
            .with_downscales(self.layer_downscales.clone())
            .with_paths(self.layer_paths.clone())
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod tests;
