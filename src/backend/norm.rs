//! The portable GroupNorm kernels of [`KernelBackend`](super::KernelBackend), in burn tensor
//! operations: a forward that also returns the per-group statistics, and the backward that
//! reads them (PyTorch's `native_group_norm` / `native_group_norm_backward` split).
//!
//! burn's `GroupNorm` is about ten tensor operations forward, and its autodiff graph about
//! twice as many backward, each a pass over the activation; a backend with its own kernels
//! (burn-ndarray's one-pass host loops, LibTorch's native GroupNorm) answers with those.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use super::{primitive, tensor};
use crate::precision::cast_to;

/// GroupNorm of `x` (`[batch, channels, spatial]`) over `groups` channel groups, with the
/// per-channel affine `gamma`, `beta` (`[channels]`): returns the output and the per-group
/// mean and reciprocal standard deviation (`[batch, groups]`, biased variance, as PyTorch).
pub fn group_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    groups: usize,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let x = tensor::<B, 3>(x);
    let [n, c, s] = x.dims();
    let xg = x.reshape([n, groups, (c / groups) * s]);
    let mean = xg.clone().mean_dim(2);
    let centered = xg - mean.clone();
    let rstd = centered
        .clone()
        .square()
        .mean_dim(2)
        .add_scalar(eps)
        .sqrt()
        .recip();
    let affine = |p| tensor::<B, 1>(p).reshape([1, c, 1]);
    let y = (centered * rstd.clone()).reshape([n, c, s]) * affine(gamma) + affine(beta);
    (
        primitive(y),
        primitive(mean.reshape([n, groups])),
        primitive(rstd.reshape([n, groups])),
    )
}

/// Gradients `[dx, dgamma, dbeta]` of [`group_norm`]'s output given `grad`, from its input,
/// `gamma` and saved statistics: with `xh` the normalised input and `dxh = grad * gamma`,
/// `dx = rstd (dxh - mean(dxh) - xh mean(dxh xh))` over each group, `dgamma = sum(grad xh)`,
/// `dbeta = sum(grad)` over batch and space. The parameter gradients come in `gamma`'s type.
pub fn group_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    rstd: FloatTensor<B>,
    grad: FloatTensor<B>,
    groups: usize,
) -> [FloatTensor<B>; 3] {
    let (x, grad) = (tensor::<B, 3>(x), tensor::<B, 3>(grad));
    let gamma = tensor::<B, 1>(gamma);
    let (x_dtype, param_dtype) = (x.dtype(), gamma.dtype());
    let [n, c, s] = x.dims();
    let m = (c / groups) * s;
    let stat = |p| tensor::<B, 2>(p).reshape([n, groups, 1]);
    let rstd = stat(rstd);
    let xh = (x.reshape([n, groups, m]) - stat(mean)) * rstd.clone();
    let xh_c = xh.clone().reshape([n, c, s]);
    let per_channel = |t: Tensor<B, 3>| cast_to(t.sum_dim(2).sum_dim(0).reshape([c]), param_dtype);
    let dbeta = per_channel(grad.clone());
    let dgamma = per_channel(grad.clone() * xh_c);
    let dxh = (grad * gamma.reshape([1, c, 1])).reshape([n, groups, m]);
    let dx = (dxh.clone() - dxh.clone().mean_dim(2) - xh.clone() * (dxh * xh).mean_dim(2)) * rstd;
    [
        primitive(cast_to(dx.reshape([n, c, s]), x_dtype)),
        primitive(dgamma),
        primitive(dbeta),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::KernelBackend;
    use burn::tensor::{Distribution, ElementConversion};

    /// The portable forward and backward against the backend's own (burn-ndarray's host
    /// loops), in f64 and f32, on a `[3, 8, 10]` input in 4 groups.
    fn portable_matches_kernel<B: KernelBackend>(tolerance: f64) {
        let device = Default::default();
        let random = |shape: Vec<usize>, d| {
            Tensor::<B, 1>::random([shape.iter().product::<usize>()], d, &device)
        };
        let x = random(vec![3, 8, 10], Distribution::Normal(-1.0, 3.0)).reshape([3, 8, 10]);
        let gamma = random(vec![8], Distribution::Normal(1.0, 0.5));
        let beta = random(vec![8], Distribution::Normal(0.0, 0.5));
        let dy = random(vec![3, 8, 10], Distribution::Default).reshape([3, 8, 10]);
        let p = |t: Tensor<B, 3>| primitive(t);
        let (y1, m1, r1) = group_norm::<B>(
            p(x.clone()),
            primitive(gamma.clone()),
            primitive(beta.clone()),
            4,
            1e-5,
        );
        let (y2, m2, r2) = B::group_norm(
            p(x.clone()),
            primitive(gamma.clone()),
            primitive(beta),
            4,
            1e-5,
        );
        let diff = |a: FloatTensor<B>, b: FloatTensor<B>| {
            let (a, b) = (
                tensor::<B, 3>(a).flatten::<1>(0, 2),
                tensor::<B, 3>(b).flatten(0, 2),
            );
            (a - b).abs().max().into_scalar().elem::<f64>()
        };
        let as3 = |t: FloatTensor<B>| primitive(tensor::<B, 2>(t).unsqueeze_dim::<3>(2));
        let forward = [
            diff(y1, y2),
            diff(as3(m1.clone()), as3(m2)),
            diff(as3(r1.clone()), as3(r2)),
        ];
        assert!(
            forward.iter().all(|&e| e < tolerance),
            "forward {forward:?}"
        );
        let g1 = group_norm_backward::<B>(
            p(x.clone()),
            primitive(gamma.clone()),
            m1.clone(),
            r1.clone(),
            p(dy.clone()),
            4,
        );
        let g2 = B::group_norm_backward(p(x), primitive(gamma), m1, r1, p(dy), 4);
        let as3_1 = |t: FloatTensor<B>| primitive(tensor::<B, 1>(t).unsqueeze::<3>());
        let [dx1, dg1, db1] = g1;
        let [dx2, dg2, db2] = g2;
        let backward = [
            diff(dx1, dx2),
            diff(as3_1(dg1), as3_1(dg2)),
            diff(as3_1(db1), as3_1(db2)),
        ];
        assert!(
            backward.iter().all(|&e| e < tolerance),
            "backward {backward:?}"
        );
    }

    #[test]
    fn portable_group_norm_matches_the_host_kernel() {
        portable_matches_kernel::<crate::TestBackend>(1e-11);
        portable_matches_kernel::<burn::backend::NdArray<f32>>(2e-5);
    }
}
