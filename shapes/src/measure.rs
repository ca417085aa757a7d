//! Claim 1 and 2 of the method: how well each noun's map agrees with its true mask, level by
//! level, for a given model.

use burn::module::AutodiffModule;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::agreement::{Agreement, agreement};
use super::data::ShapesSet;
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::calibration::{CtcalConfig, StepDraw, TrainBatch, teacher_maps};
use ctcal::nn::normal_tensor;
use ctcal::pipeline::shapes::ShapesModel;
use ctcal::schedule::Schedule;

/// Mean agreement of the noun maps at one noise level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LevelAgreement {
    /// Flow sigma (or DDPM timestep).
    pub level: f64,
    /// Mean share of each map's mass inside its noun's mask.
    pub mass_inside: f32,
    /// Mean IoU of the map thresholded at half its maximum with the mask.
    pub iou: f32,
    /// Mean AUROC of the map against the mask (0.5: unrelated; over the maps whose mask
    /// covers some cells and not all).
    pub auroc: f32,
    /// Share of maps whose peak lies on the mask (the pointing game).
    pub pointing: f32,
    /// Mean share of the image the masks cover (what a uniform map scores as mass inside).
    pub chance: f32,
    /// Maps averaged.
    pub maps: usize,
}

/// What to measure: the levels, how maps are collected (CTCal's teacher rules under `config`),
/// and the batch and noise seed (the same images and noise at every level).
#[derive(Debug, Clone)]
pub struct AgreementProbe {
    /// Noise levels (flow sigmas or DDPM timesteps).
    pub levels: Vec<f64>,
    /// The noise process.
    pub schedule: Schedule,
    /// Which layers' maps, on which grid.
    pub config: CtcalConfig,
    /// Scenes per forward.
    pub batch: usize,
    /// Seed of the noise.
    pub seed: u64,
}

/// For each of `probe.levels`, the mean agreement of every noun map of `set` with its mask.
pub fn agreement_by_level<B: AutodiffAttentionBackend>(
    model: &ShapesModel<B>,
    set: &ShapesSet,
    probe: &AgreementProbe,
    device: &B::Device,
) -> ctcal::Result<Vec<LevelAgreement>>
where
    ShapesModel<B>: AutodiffModule<B>,
{
    let per_map = map_agreements(model, set, probe, device)?;
    Ok(level_summaries(&probe.levels, &per_map))
}

/// The means per level of [`map_agreements`]' output.
pub fn level_summaries(levels: &[f64], per_map: &[Vec<(Agreement, f32)>]) -> Vec<LevelAgreement> {
    levels
        .iter()
        .zip(per_map)
        .map(|(&level, maps)| {
            let mut sums = Sums::default();
            for (a, chance) in maps {
                sums.add(a, *chance);
            }
            sums.level(level)
        })
        .collect()
}

/// For each of `probe.levels`, the agreement of every noun map of `set` with its mask and the
/// mask's area share, in a fixed order (scene by scene, noun by noun), so two models measured
/// with the same probe can be compared map by map.
pub fn map_agreements<B: AutodiffAttentionBackend>(
    model: &ShapesModel<B>,
    set: &ShapesSet,
    probe: &AgreementProbe,
    device: &B::Device,
) -> ctcal::Result<Vec<Vec<(Agreement, f32)>>>
where
    ShapesModel<B>: AutodiffModule<B>,
{
    let (levels, schedule, config, batch, seed) = (
        &probe.levels[..],
        &probe.schedule,
        &probe.config,
        probe.batch,
        probe.seed,
    );
    let mut per_level: Vec<Vec<(Agreement, f32)>> = vec![Vec::new(); levels.len()];
    let s = set.size;
    let mut rng = StdRng::seed_from_u64(seed);
    for index in set.chunks(batch) {
        let b = set.batch::<B>(&index, &[], device)?;
        let cond = model.encode(&b.ids, device)?;
        let noise = normal_tensor::<B, 4>(&mut rng, [index.len(), 3, s, s], device);
        let data = TrainBatch {
            latents: b.pixels,
            cond,
            nouns: b.nouns,
            teacher: None,
        };
        for (l, &level) in levels.iter().enumerate() {
            let draw = StepDraw {
                noise: noise.clone(),
                student: vec![level; index.len()],
                teacher: vec![level; index.len()],
            };
            let maps = teacher_maps(&model.denoiser, &data, &draw, schedule, config)?;
            for (k, m) in maps.into_iter().enumerate() {
                let Some(m) = m else { continue };
                let [n, h, w] = m.dims();
                let values = m
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| ctcal::Error::Input(format!("maps: {e:?}")))?;
                for noun in 0..n {
                    let mask = &set.masks[index[k]][noun];
                    let a = agreement(
                        &values[noun * h * w..(noun + 1) * h * w],
                        [h, w],
                        mask,
                        [s, s],
                        0.5,
                    )?;
                    let chance = mask.iter().sum::<f32>() / mask.len() as f32;
                    per_level[l].push((a, chance));
                }
            }
        }
    }
    Ok(per_level)
}

/// Running sums of the agreement of the maps at one level.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    mass_inside: f64,
    iou: f64,
    chance: f64,
    pointing: f64,
    auroc: f64,
    ranked: usize,
    maps: usize,
}

impl Sums {
    fn add(&mut self, a: &Agreement, chance: f32) {
        self.mass_inside += a.mass_inside as f64;
        self.iou += a.iou as f64;
        self.chance += chance as f64;
        self.pointing += a.pointing as f64;
        if let Some(auroc) = a.auroc {
            self.auroc += auroc as f64;
            self.ranked += 1;
        }
        self.maps += 1;
    }

    fn level(&self, level: f64) -> LevelAgreement {
        let d = self.maps.max(1) as f64;
        LevelAgreement {
            level,
            mass_inside: (self.mass_inside / d) as f32,
            iou: (self.iou / d) as f32,
            auroc: (self.auroc / self.ranked.max(1) as f64) as f32,
            pointing: (self.pointing / d) as f32,
            chance: (self.chance / d) as f32,
            maps: self.maps,
        }
    }
}
