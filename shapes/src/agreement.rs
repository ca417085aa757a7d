//! How well a noun's attention map agrees with where its objects are: the share of the map's
//! mass inside the true mask, and the IoU of the thresholded map with the mask.

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
    Ok(Agreement {
        mass_inside: if total > 0.0 { inside / total } else { 0.0 },
        iou: if union > 0 {
            inter as f32 / union as f32
        } else {
            0.0
        },
    })
}
