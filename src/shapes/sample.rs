//! Drawing images from a shapes model: Euler steps of the flow ODE from noise (sigma 1) to an
//! image (sigma 0), with classifier-free guidance against the empty caption.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::data::ShapesSet;
use super::model::ShapesModel;
use crate::attention::{AttentionBackend, NoHook};
use crate::ctcal::{Denoiser, TextCond};

/// Integrates `dx/dsigma = v(x, sigma)` with Euler steps over `sigmas` (decreasing, ending at
/// 0): `x <- x + (sigma_next - sigma) v`. For a flow model `v` is its `eps - x0` prediction.
pub fn flow_euler<B: Backend>(
    mut x: Tensor<B, 4>,
    sigmas: &[f64],
    mut velocity: impl FnMut(Tensor<B, 4>, f64) -> crate::Result<Tensor<B, 4>>,
) -> crate::Result<Tensor<B, 4>> {
    for w in sigmas.windows(2) {
        let v = velocity(x.clone(), w[0])?;
        x = x + v.mul_scalar(w[1] - w[0]);
    }
    Ok(x)
}

/// `steps + 1` evenly spaced sigmas from 1 to 0.
pub fn linear_sigmas(steps: usize) -> Vec<f64> {
    (0..=steps)
        .map(|i| 1.0 - i as f64 / steps.max(1) as f64)
        .collect()
}

/// Samples one image per caption id row of `ids` with `guidance` (1: no guidance), from the
/// given initial noise `[batch, 3, size, size]`; returns row-major RGB bytes per image.
pub fn sample_images<B: AttentionBackend>(
    model: &ShapesModel<B>,
    ids: &[Vec<usize>],
    set: &ShapesSet,
    noise: Tensor<B, 4>,
    steps: usize,
    guidance: f64,
) -> crate::Result<Vec<Vec<u8>>> {
    let device = noise.device();
    let b = ids.len();
    let empty = vec![set.empty_ids.clone(); b];
    let both: Vec<Vec<usize>> = ids.iter().cloned().chain(empty).collect();
    let cond = model.encode(&both, &device)?;
    let x = flow_euler(noise, &linear_sigmas(steps), |x, sigma| {
        let t = Tensor::<B, 1>::full([2 * b], 1000.0 * sigma, &device);
        let v = model.denoiser.denoise(
            Tensor::cat(vec![x.clone(), x], 0),
            t,
            &TextCond {
                hidden: cond.hidden.clone(),
                pooled: cond.pooled.clone(),
            },
            &mut NoHook,
        )?;
        let c = v.clone().narrow(0, 0, b);
        let u = v.narrow(0, b, b);
        Ok(u.clone() + (c - u).mul_scalar(guidance))
    })?;
    let [_, _, h, w] = x.dims();
    let values: Vec<f32> = x
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| crate::Error::Input(format!("samples: {e:?}")))?;
    let n = h * w;
    Ok((0..b)
        .map(|i| {
            let img = &values[i * 3 * n..(i + 1) * 3 * n];
            (0..n)
                .flat_map(|p| {
                    (0..3).map(move |k| {
                        ((img[k * n + p] + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
                    })
                })
                .collect()
        })
        .collect())
}
