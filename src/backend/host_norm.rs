//! burn-ndarray's own GroupNorm kernels: the forward in two passes over each group (mean,
//! then variance and the affine output), the backward in two (the per-channel sums, then the
//! input gradient), one rayon task per (sample, group), sums in f64.
//!
//! burn's composed GroupNorm makes about ten full-size buffers forward and twenty backward
//! under autodiff; the UNet normalises before every convolution pair and transformer.

use burn::backend::ndarray::NdArrayTensor;
use ndarray::{ArcArray, IxDyn};
use rayon::prelude::*;

use super::host::{Value, elements, tensor};

/// [`KernelBackend::group_norm`](super::KernelBackend::group_norm); `None` for other dtypes,
/// mixed dtypes or shapes it does not handle (the portable version runs instead).
pub(crate) fn group_norm(
    x: &NdArrayTensor,
    gamma: &NdArrayTensor,
    beta: &NdArrayTensor,
    groups: usize,
    eps: f64,
) -> Option<(NdArrayTensor, NdArrayTensor, NdArrayTensor)> {
    match x {
        NdArrayTensor::F32(_) => forward::<f32>(x, gamma, beta, groups, eps),
        NdArrayTensor::F64(_) => forward::<f64>(x, gamma, beta, groups, eps),
        _ => None,
    }
}

/// [`KernelBackend::group_norm_backward`](super::KernelBackend::group_norm_backward); `None`
/// where [`group_norm`] is.
pub(crate) fn group_norm_backward(
    x: &NdArrayTensor,
    gamma: &NdArrayTensor,
    mean: &NdArrayTensor,
    rstd: &NdArrayTensor,
    grad: &NdArrayTensor,
    groups: usize,
) -> Option<[NdArrayTensor; 3]> {
    match x {
        NdArrayTensor::F32(_) => backward::<f32>(x, gamma, mean, rstd, grad, groups),
        NdArrayTensor::F64(_) => backward::<f64>(x, gamma, mean, rstd, grad, groups),
        _ => None,
    }
}

/// `[batch, channels, spatial]` of a rank-3 `x` whose channels split into `groups` and match
/// `params` channels.
fn dims(shape: &[usize], groups: usize, params: usize) -> Option<[usize; 3]> {
    match *shape {
        [n, c, s] if groups > 0 && s > 0 && c > 0 && c % groups == 0 && c == params => {
            Some([n, c, s])
        }
        _ => None,
    }
}

fn forward<T: Value>(
    x: &NdArrayTensor,
    gamma: &NdArrayTensor,
    beta: &NdArrayTensor,
    groups: usize,
    eps: f64,
) -> Option<(NdArrayTensor, NdArrayTensor, NdArrayTensor)>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (xv, gv, bv) = (T::view(x)?, T::view(gamma)?, T::view(beta)?);
    let [n, c, s] = dims(xv.shape(), groups, gv.len().min(bv.len()))?;
    let (xs, gs, bs) = (elements(xv), elements(gv), elements(bv));
    let per_group = c / groups;
    let m = per_group * s;
    let mut y = vec![T::default(); xs.len()];
    let mut stats = vec![(0.0, 0.0); n * groups];
    y.par_chunks_mut(m)
        .zip(xs.par_chunks(m))
        .zip(stats.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((y, x), stat))| {
            let mean = x.iter().map(|v| v.wide()).sum::<f64>() / m as f64;
            let var = x.iter().map(|v| (v.wide() - mean).powi(2)).sum::<f64>() / m as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            let first = (i % groups) * per_group;
            for (ch, (y, x)) in y.chunks_mut(s).zip(x.chunks(s)).enumerate() {
                // y = (x - mean) rstd gamma + beta = x a + b
                let a = rstd * gs[first + ch].wide();
                let (a, b) = (T::narrow(a), T::narrow(bs[first + ch].wide() - mean * a));
                y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * a + b);
            }
            *stat = (mean, rstd);
        });
    let stat = |f: fn(&(f64, f64)) -> f64| {
        tensor::<T>(
            stats.iter().map(|s| T::narrow(f(s))).collect(),
            &[n, groups],
        )
    };
    Some((tensor(y, &[n, c, s]), stat(|s| s.0), stat(|s| s.1)))
}

fn backward<T: Value>(
    x: &NdArrayTensor,
    gamma: &NdArrayTensor,
    mean: &NdArrayTensor,
    rstd: &NdArrayTensor,
    grad: &NdArrayTensor,
    groups: usize,
) -> Option<[NdArrayTensor; 3]>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (xv, gv, dyv) = (T::view(x)?, T::view(gamma)?, T::view(grad)?);
    let (mv, rv) = (T::view(mean)?, T::view(rstd)?);
    let [n, c, s] = dims(xv.shape(), groups, gv.len())?;
    if dyv.shape() != xv.shape() || mv.len() != n * groups || rv.len() != n * groups {
        return None;
    }
    let (xs, gs, dys) = (elements(xv), elements(gv), elements(dyv));
    let (ms, rs) = (elements(mv), elements(rv));
    let per_group = c / groups;
    let m = per_group * s;
    let mut dx = vec![T::default(); xs.len()];
    // Per (sample, group): each channel's sum of dy and of dy * x_hat, for dgamma and dbeta.
    let mut sums = vec![Vec::new(); n * groups];
    dx.par_chunks_mut(m)
        .zip(xs.par_chunks(m).zip(dys.par_chunks(m)))
        .zip(sums.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((dx, (x, dy)), sums))| {
            let (mean, rstd) = (ms[i].wide(), rs[i].wide());
            let first = (i % groups) * per_group;
            *sums = x
                .chunks(s)
                .zip(dy.chunks(s))
                .map(|(x, dy)| {
                    x.iter().zip(dy).fold((0.0, 0.0), |(s1, s2), (&x, &dy)| {
                        let dy = dy.wide();
                        (s1 + dy, s2 + dy * (x.wide() - mean) * rstd)
                    })
                })
                .collect();
            // With dxh = dy * gamma: mean(dxh) and mean(dxh * x_hat) over the group.
            let (mut a, mut b) = (0.0, 0.0);
            for (ch, &(s1, s2)) in sums.iter().enumerate() {
                a += gs[first + ch].wide() * s1;
                b += gs[first + ch].wide() * s2;
            }
            let (a, b) = (a / m as f64, b / m as f64);
            for (ch, (dx, (x, dy))) in dx
                .chunks_mut(s)
                .zip(x.chunks(s).zip(dy.chunks(s)))
                .enumerate()
            {
                // dx = rstd (gamma dy - a - x_hat b), x_hat = (x - mean) rstd: dx = dy p + x q + r
                let g = gs[first + ch].wide();
                let p = T::narrow(rstd * g);
                let q = T::narrow(-rstd * rstd * b);
                let r = T::narrow(rstd * (mean * rstd * b - a));
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    *dx = dy * p + x * q + r;
                }
            }
        });
    let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
    for (i, sums) in sums.iter().enumerate() {
        let first = (i % groups) * per_group;
        for (ch, &(s1, s2)) in sums.iter().enumerate() {
            dbeta[first + ch] += s1;
            dgamma[first + ch] += s2;
        }
    }
    let narrow = |v: Vec<f64>| tensor::<T>(v.into_iter().map(T::narrow).collect(), &[c]);
    Some([tensor(dx, &[n, c, s]), narrow(dgamma), narrow(dbeta)])
}
