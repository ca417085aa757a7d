//! The benchmark's noise levels per architecture: where the agreement curves, the held-out
//! loss and the map figures are measured (sigmas for the MMDiT, the DDPM timesteps at the same
//! fractions of `T = 1000` for the UNet).

use ctcal::pipeline::shapes::ShapesArch;

/// Measurement levels of an architecture.
pub trait ArchLevels: Copy {
    /// The nine noise levels of the agreement curves, from nearly clean to nearly pure noise.
    fn levels(self) -> Vec<f64>;
    /// Levels at or above this are "large t" (claim 2).
    fn large_t(self) -> f64;
    /// Levels of the held-out diffusion loss.
    fn loss_levels(self) -> Vec<f64>;
    /// The teacher and student levels of the map figures.
    fn preview_levels(self) -> (f64, f64);
    /// What a level is called in reports.
    fn level_name(self) -> &'static str;
}

impl ArchLevels for ShapesArch {
    fn levels(self) -> Vec<f64> {
        at_fractions(self, &[0.02, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.98])
    }

    fn large_t(self) -> f64 {
        match self {
            Self::Mmdit => 0.7,
            Self::Unet => 700.0,
        }
    }

    fn loss_levels(self) -> Vec<f64> {
        at_fractions(self, &[0.1, 0.3, 0.5, 0.7, 0.9])
    }

    fn preview_levels(self) -> (f64, f64) {
        match self {
            Self::Mmdit => (0.02, 0.9),
            Self::Unet => (20.0, 900.0),
        }
    }

    fn level_name(self) -> &'static str {
        match self {
            Self::Mmdit => "sigma",
            Self::Unet => "t",
        }
    }
}

/// Levels at these fractions of the noise range: the sigmas themselves, or the DDPM timesteps
/// `round(1000 f)`.
fn at_fractions(arch: ShapesArch, fractions: &[f64]) -> Vec<f64> {
    match arch {
        ShapesArch::Mmdit => fractions.to_vec(),
        ShapesArch::Unet => fractions.iter().map(|f| (f * 1000.0).round()).collect(),
    }
}
