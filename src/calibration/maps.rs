//! From captured attention probabilities to one map per noun.
//!
//! 1. Each captured layer: for joint (MMDiT) layers, renormalise the image-to-text block over
//!    the text keys; average the heads; lay the queries out on their grid.
//! 2. Resize every layer to a common grid ([`resize`]: area average along a shrinking axis,
//!    half-pixel linear interpolation along a growing one) and average the layers.
//! 3. A noun's map is the sum of its tokens' maps.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::attention::{AttentionKind, StoredMap};
use crate::error::{Error, Result};
use crate::nouns::NounGroups;

/// Head- and layer-averaged maps of every text token on `grid`.
///
/// # Shapes
/// - each `maps[i].probs`: `[batch, heads, grid_h * grid_w, tokens]`
/// - returns `[batch, tokens, grid[0], grid[1]]`
pub fn token_maps<B: Backend>(maps: &[StoredMap<B>], grid: [usize; 2]) -> Result<Tensor<B, 4>> {
    let first = maps.first().ok_or_else(|| {
        Error::Input("no attention maps were captured: the layer selection matches no site".into())
    })?;
    let [batch, _, _, tokens] = first.probs.dims();
    let mut sum: Option<Tensor<B, 4>> = None;
    for map in maps {
        let [b, _, q, k] = map.probs.dims();
        let [h, w] = map.grid;
        if b != batch || k != tokens || q != h * w {
            return Err(Error::Input(format!(
                "map of {} has shape {:?} on grid {h}x{w}; expected [{batch}, heads, {}, {tokens}]",
                map.site.path(),
                map.probs.dims(),
                h * w
            )));
        }
        let probs = if map.site.kind == AttentionKind::Joint {
            let total = map.probs.clone().sum_dim(3);
            map.probs.clone() / total
        } else {
            map.probs.clone()
        };
        // [b, heads, q, k] -> [b, k, h, w]
        let layer = probs
            .mean_dim(1)
            .reshape([b, q, k])
            .swap_dims(1, 2)
            .reshape([b, k, h, w]);
        let layer = resize(layer, grid);
        sum = Some(match sum {
            Some(s) => s + layer,
            None => layer,
        });
    }
    let sum = sum.expect("at least one map");
    Ok(sum.div_scalar(maps.len() as f64))
}

/// Resizes `[b, c, h, w]` maps to `grid`, each axis on its own: a shrinking axis is area
/// averaged over PyTorch's `adaptive_avg_pool2d` bins, a growing axis is linearly interpolated
/// as `interpolate(mode="bilinear", align_corners=False)` does.
///
/// Written as two small matrix products so it is differentiable on every backend (burn-ndarray
/// has no bilinear backward).
pub fn resize<B: Backend>(maps: Tensor<B, 4>, grid: [usize; 2]) -> Tensor<B, 4> {
    let [b, c, h, w] = maps.dims();
    if [h, w] == grid {
        return maps;
    }
    let device = maps.device();
    let [gh, gw] = grid;
    let rows = Tensor::<B, 2>::from_data(TensorData::new(resize_matrix(h, gh), [gh, h]), &device);
    let cols = Tensor::<B, 2>::from_data(TensorData::new(resize_matrix(w, gw), [gw, w]), &device);
    let x = maps.reshape([b * c, h, w]);
    let x = rows.unsqueeze_dim::<3>(0).expand([b * c, gh, h]).matmul(x);
    let x = x.matmul(
        cols.transpose()
            .unsqueeze_dim::<3>(0)
            .expand([b * c, w, gw]),
    );
    x.reshape([b, c, gh, gw])
}

/// The `[out, len]` row-major matrix that resizes one axis of length `len` to `out`.
pub fn resize_matrix(len: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * len];
    for i in 0..out {
        let row = &mut m[i * len..(i + 1) * len];
        if out <= len {
            // Adaptive average pooling bins.
            let start = i * len / out;
            let end = ((i + 1) * len).div_ceil(out);
            for v in &mut row[start..end] {
                *v = 1.0 / (end - start) as f32;
            }
        } else {
            // Half-pixel linear interpolation, clamped at the borders.
            let src = ((i as f64 + 0.5) * len as f64 / out as f64 - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(len - 1);
            let i1 = (i0 + 1).min(len - 1);
            let t = (src - i0 as f64) as f32;
            row[i0] += 1.0 - t;
            row[i1] += t;
        }
    }
    m
}

/// The map of each noun of each sample: the sum of its tokens' maps.
///
/// Returns one `[nouns, h, w]` tensor per sample, `None` for a sample without nouns. Token
/// positions beyond the text are an error naming the sample and noun.
pub fn noun_maps<B: Backend>(
    token_maps: Tensor<B, 4>,
    nouns: &[NounGroups],
) -> Result<Vec<Option<Tensor<B, 3>>>> {
    let [batch, tokens, h, w] = token_maps.dims();
    if nouns.len() != batch {
        return Err(Error::Input(format!(
            "{} noun lists for a batch of {batch}",
            nouns.len()
        )));
    }
    let device = token_maps.device();
    let mut out = Vec::with_capacity(batch);
    for (b, groups) in nouns.iter().enumerate() {
        groups.check(b, tokens)?;
        if groups.is_empty() {
            out.push(None);
            continue;
        }
        let n = groups.len();
        let mut select = vec![0f32; n * tokens];
        for (i, group) in groups.0.iter().enumerate() {
            for &p in group {
                select[i * tokens + p] = 1.0;
            }
        }
        let select = Tensor::<B, 2>::from_data(TensorData::new(select, [n, tokens]), &device);
        let sample = token_maps.clone().narrow(0, b, 1).reshape([tokens, h * w]);
        out.push(Some(select.matmul(sample).reshape([n, h, w])));
    }
    Ok(out)
}
