//! How well a noun's attention map agrees with where its objects are: the share of the map's
//! mass inside the true mask, the IoU of the thresholded map with the mask, the AUROC of the
//! map as a score of "this cell is the object's", and the pointing game (the map's peak lies on
//! the object).
//!
//! Mass inside moves with the map's sharpness as much as with its placement, and an inverted
//! map can score like a blurred one; the AUROC depends only on the order of the map's values
//! (0.5 for a map unrelated to the mask, 0 for an inverted one, 1 for a perfect ranking), so it
//! tells placement apart from sharpness.

use serde::{Deserialize, Serialize};

use ctcal::error::{Error, Result};

/// Agreement of one map with one mask.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// `sum(map * mask) / sum(map)`, the mask taken as the covered fraction of each map cell:
    /// 1 when all attention falls on the objects, the mask's area share for a uniform map.
    pub mass_inside: f32,
    /// IoU of `{map >= threshold * max(map)}` with `{mask cell at least half covered}`.
    pub iou: f32,
    /// Area under the ROC curve of the map's values as scores for the cells at least half
    /// covered by the mask against the others (the Mann-Whitney statistic, ties counting
    /// half); `None` when every cell is on one side.
    pub auroc: Option<f32>,
    /// Share of the map's maximal cells that are at least half covered (1 or 0 unless the
    /// maximum is tied): the pointing game.
    pub pointing: f32,
}

/// The AUROC of `scores` for `labels` (true: positive) by average ranks: `(R+ - n+(n+ + 1) / 2)
/// / (n+ n-)` with `R+` the sum of the positives' ranks. `None` without positives or negatives.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f32> {
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 || scores.len() != labels.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let mean_rank = (i + j + 2) as f64 / 2.0;
        rank_sum += mean_rank * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some(((rank_sum - p * (p + 1.0) / 2.0) / (p * n)) as f32)
}

/// Compares a `[h, w]` map (row-major, non-negative) with a coverage mask of `[mh, mw]`
/// (row-major, values in `[0, 1]`) whose sides are whole multiples of the map's: the mask is
/// averaged over each map cell first. `threshold` is relative to the map's maximum (0.5 is
/// the usual choice).
pub fn agreement(
    map: &[f32],
    map_hw: [usize; 2],
    mask: &[f32],
    mask_hw: [usize; 2],
    threshold: f32,
) -> Result<Agreement> {
    let [h, w] = map_hw;
    let [mh, mw] = mask_hw;
    if map.len() != h * w || mask.len() != mh * mw {
        return Err(Error::Input(format!(
            "agreement: map of {} values for {h}x{w}, mask of {} for {mh}x{mw}",
            map.len(),
            mask.len()
        )));
    }
    if h == 0 || w == 0 || mh % h != 0 || mw % w != 0 {
        return Err(Error::Input(format!(
            "agreement: the {mh}x{mw} mask does not divide into the {h}x{w} map's cells"
        )));
    }
    let (fy, fx) = (mh / h, mw / w);
    let cell = |y: usize, x: usize| -> f32 {
        let mut s = 0.0;
        for yy in y * fy..(y + 1) * fy {
            s += mask[yy * mw + x * fx..yy * mw + (x + 1) * fx]
                .iter()
                .sum::<f32>();
        }
        s / (fy * fx) as f32
    };
    let cells: Vec<f32> = (0..h * w).map(|i| cell(i / w, i % w)).collect();
    let total: f32 = map.iter().map(|v| v.max(0.0)).sum();
    let inside: f32 = map.iter().zip(&cells).map(|(v, c)| v.max(0.0) * c).sum();
    let max = map.iter().cloned().fold(f32::MIN, f32::max);
    let (mut inter, mut union) = (0usize, 0usize);
    for (v, c) in map.iter().zip(&cells) {
        let a = max > 0.0 && *v >= threshold * max;
        let b = *c >= 0.5;
        inter += (a && b) as usize;
        union += (a || b) as usize;
    }
    let labels: Vec<bool> = cells.iter().map(|c| *c >= 0.5).collect();
    let peaks: Vec<bool> = map
        .iter()
        .zip(&labels)
        .filter(|(v, _)| **v == max)
        .map(|(_, l)| *l)
        .collect();
    let pointing = peaks.iter().filter(|&&l| l).count() as f32 / peaks.len().max(1) as f32;
    Ok(Agreement {
        mass_inside: if total > 0.0 { inside / total } else { 0.0 },
        iou: if union > 0 {
            inter as f32 / union as f32
        } else {
            0.0
        },
        auroc: auroc(map, &labels),
        pointing,
    })
}
