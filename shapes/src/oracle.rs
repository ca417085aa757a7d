//! The benchmark's oracle arm: the CTCal loss with each noun's true mask as its teacher map,
//! in place of the model's own maps at a small noise level. Everything else (data order, noise,
//! levels, weights, the map auto-encoder) is the CTCal arm's, so the oracle's effect is the
//! ceiling of what supervising the maps can do in this setting, and CTCal's effect can be read
//! as a fraction of it.

use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};

use super::data::ShapesSet;
use ctcal::calibration::TrainBatch;
use ctcal::data::Batch;
use ctcal::error::{Error, Result};
use ctcal::nouns::Nouns;
use ctcal::train::{TrainConfig, TrainInputs};

/// [`TrainInputs`] that add the true masks of `set` (the dataset the trainer loads from, so a
/// batch's indices are scenes of it) as given teacher maps on a `grid` x `grid` map grid to
/// whatever `inner` builds.
#[derive(Debug, Clone)]
pub struct OracleInputs<I> {
    /// The inputs of the plain and CTCal arms.
    pub inner: I,
    /// The scenes the batches come from.
    pub set: Arc<ShapesSet>,
    /// Side of the map grid the loss compares maps on.
    pub grid: usize,
}

/// The `[grid, grid]` area average of a `[size, size]` coverage mask (`size` a multiple of
/// `grid`): the share of each map cell the noun's objects cover.
pub fn pool_mask(mask: &[f32], size: usize, grid: usize) -> Result<Vec<f32>> {
    if grid == 0 || !size.is_multiple_of(grid) || mask.len() != size * size {
        return Err(Error::Input(format!(
            "a mask of {} values for {size}x{size} does not pool to {grid}x{grid}",
            mask.len()
        )));
    }
    let f = size / grid;
    Ok((0..grid * grid)
        .map(|cell| {
            let (y, x) = (cell / grid, cell % grid);
            let sum: f32 = (y * f..(y + 1) * f)
                .map(|r| {
                    mask[r * size + x * f..r * size + (x + 1) * f]
                        .iter()
                        .sum::<f32>()
                })
                .sum();
            sum / (f * f) as f32
        })
        .collect())
}

/// The pooled masks of the scenes `indices` of `set`, one `[nouns * grid * grid]` list per
/// sample whose noun count is `nouns[k]` (`None` where it is 0: a dropped caption).
pub fn oracle_maps(
    set: &ShapesSet,
    indices: &[usize],
    nouns: &[usize],
    grid: usize,
) -> Result<Vec<Option<Vec<f32>>>> {
    indices
        .iter()
        .zip(nouns)
        .map(|(&i, &n)| {
            if n == 0 {
                return Ok(None);
            }
            let masks = set.masks.get(i).filter(|m| m.len() == n).ok_or_else(|| {
                Error::Input(format!(
                    "scene {i}: {n} nouns in the batch, {} masks in the set",
                    set.masks.get(i).map_or(0, Vec::len)
                ))
            })?;
            let mut values = Vec::with_capacity(n * grid * grid);
            for mask in masks {
                values.extend(pool_mask(mask, set.size, grid)?);
            }
            Ok(Some(values))
        })
        .collect()
}

impl<B, M, I> TrainInputs<B, M> for OracleInputs<I>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    I: TrainInputs<B, M>,
{
    fn train_batch(
        &self,
        model: &M,
        batch: &Batch,
        config: &TrainConfig,
        device: &B::Device,
    ) -> Result<TrainBatch<B>> {
        let mut data = self.inner.train_batch(model, batch, config, device)?;
        let counts: Vec<usize> = data.nouns.iter().map(|n| n.len()).collect();
        let maps = oracle_maps(&self.set, &batch.indices, &counts, self.grid)?;
        let g = self.grid;
        data.teacher = Some(
            maps.into_iter()
                .zip(counts)
                .map(|(m, n)| m.map(|v| Tensor::from_data(TensorData::new(v, [n, g, g]), device)))
                .collect(),
        );
        Ok(data)
    }

    fn check_caption(&self, caption: &str, nouns: &Nouns, config: &TrainConfig) -> Result<()> {
        self.inner.check_caption(caption, nouns, config)
    }

    fn render(
        &self,
        model: &M::InnerModule,
        prompts: &[&str],
        steps: usize,
        seed: u64,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        self.inner.render(model, prompts, steps, seed)
    }
}
