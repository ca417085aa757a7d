//! Drawing images from a shapes model with its family's sampler (flow Euler for the MMDiT,
//! DDIM for the UNet, see [`ShapesArch::sample`](super::ShapesArch::sample)) and
//! classifier-free guidance against the empty caption.

use burn::tensor::Tensor;

use super::data::ShapesSet;
use ctcal::attention::AttentionBackend;
use ctcal::pipeline::shapes::ShapesModel;

/// Samples one image per caption id row of `ids` with `guidance` (1: no guidance) in `steps`
/// sampler steps from the given standard-normal noise `[batch, 3, size, size]`; returns
/// row-major RGB bytes per image.
pub fn sample_images<B: AttentionBackend>(
    model: &ShapesModel<B>,
    ids: &[Vec<usize>],
    set: &ShapesSet,
    noise: Tensor<B, 4>,
    steps: usize,
    guidance: f64,
) -> ctcal::Result<Vec<Vec<u8>>> {
    let device = noise.device();
    let b = ids.len();
    let cond = model.encode(ids, &device)?;
    let uncond = model.encode(&vec![set.empty_ids.clone(); b], &device)?;
    let x = model
        .arch()
        .sample(&model.denoiser, noise, &cond, &uncond, steps, guidance)?;
    let [_, _, h, w] = x.dims();
    let values: Vec<f32> = x
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| ctcal::Error::Input(format!("samples: {e:?}")))?;
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
