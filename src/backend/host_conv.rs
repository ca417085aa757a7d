//! burn-ndarray's own 2-D convolution: per image, the kernel windows gathered into a column
//! buffer ([`gather_plane`]) and one matrix product with the weight, the output written in
//! place; the input gradient as the weight's transpose times the output gradient, scattered
//! back ([`scatter_plane`]); the weight gradient as the output gradient times each image's
//! columns, summed.
//!
//! The portable im2col convolution ([`crate::nn::im2col_conv2d`]) materialises the whole
//! batch's columns and goes through burn-ndarray's matmul, which copies both operands and its
//! output; here one column buffer per thread is the only temporary.

use burn::backend::ndarray::NdArrayTensor;
use burn::tensor::ops::ConvOptions;
use ndarray::{ArcArray, ArrayView2, ArrayViewMut2, IxDyn};
use rayon::prelude::*;

use super::columns::Columns;
use super::host::{Value, dispatch, elements, gather_plane, scatter_plane, tensor};
use super::host_gemm::{Float, Threads, matmul};

/// [`KernelBackend::convolve`](super::KernelBackend::convolve); `None` for grouped
/// convolutions, other or mixed dtypes and shapes it does not take.
pub(crate) fn convolve(
    x: &NdArrayTensor,
    weight: &NdArrayTensor,
    bias: &NdArrayTensor,
    options: &ConvOptions<2>,
) -> Option<NdArrayTensor> {
    dispatch!(x, convolve_typed(x, weight, bias, options))
}

/// [`KernelBackend::conv2d_x_grad`](super::KernelBackend::conv2d_x_grad).
pub(crate) fn x_grad(
    x: &NdArrayTensor,
    weight: &NdArrayTensor,
    grad: &NdArrayTensor,
    options: &ConvOptions<2>,
) -> Option<NdArrayTensor> {
    dispatch!(x, x_grad_typed(x, weight, grad, options))
}

/// [`KernelBackend::conv2d_weight_grad`](super::KernelBackend::conv2d_weight_grad).
pub(crate) fn weight_grad(
    x: &NdArrayTensor,
    weight: &NdArrayTensor,
    grad: &NdArrayTensor,
    options: &ConvOptions<2>,
) -> Option<NdArrayTensor> {
    dispatch!(x, weight_grad_typed(x, weight, grad, options))
}

/// One convolution's sizes: the column geometry, `c_out` and the weight's `[c_out, K]` width.
struct Plan {
    g: Columns,
    c_out: usize,
    /// Column rows, `c_in * kh * kw`.
    k: usize,
    /// Output positions per image, `h_out * w_out`.
    l: usize,
}

impl Plan {
    /// From `x` `[b, c_in, h, w]` and `weight` `[c_out, c_in, kh, kw]`, ungrouped; `None`
    /// otherwise or when the kernel does not fit.
    fn of(x: &[usize], weight: &[usize], options: &ConvOptions<2>) -> Option<Self> {
        let (&[b, c_in, h, w], &[c_out, wc, kh, kw]) = (x, weight) else {
            return None;
        };
        if options.groups != 1 || wc != c_in || b == 0 || c_in == 0 || c_out == 0 {
            return None;
        }
        let [ph, pw] = options.padding;
        let g = Columns {
            batch: b,
            channels: c_in,
            input: [h, w],
            kernel: [kh, kw],
            stride: options.stride,
            dilation: options.dilation,
            padding: [ph, pw, ph, pw],
        };
        let [h_out, w_out] = g.output();
        let l = h_out * w_out;
        (l > 0 && h * w > 0 && kh * kw > 0).then(|| Self {
            c_out,
            k: c_in * kh * kw,
            l,
            g,
        })
    }

    fn image(&self) -> usize {
        self.g.channels * self.g.input[0] * self.g.input[1]
    }

    /// Parallel over images when there are enough of them, else inside each product.
    fn threads(&self) -> Threads {
        if self.g.batch >= rayon::current_num_threads() {
            Threads::One
        } else {
            Threads::All
        }
    }

    /// Gathers one image's columns into `cols` `[k, l]` (padding entries stay as they are:
    /// zero in a buffer that started zeroed and only ever held this geometry's columns).
    fn gather<T: Value>(&self, image: &[T], cols: &mut [T])
    where
        NdArrayTensor: From<ArcArray<T, IxDyn>>,
    {
        let plane = self.g.input[0] * self.g.input[1];
        let rows = self.k / self.g.channels * self.l;
        for (src, dst) in image.chunks(plane).zip(cols.chunks_mut(rows)) {
            gather_plane(&self.g, src, dst);
        }
    }
}

/// `[rows, cols]` over a row-major buffer.
fn mat<T>(data: &[T], rows: usize, cols: usize) -> ArrayView2<'_, T> {
    ArrayView2::from_shape((rows, cols), data).expect("rows * cols elements")
}

fn mat_mut<T>(data: &mut [T], rows: usize, cols: usize) -> ArrayViewMut2<'_, T> {
    ArrayViewMut2::from_shape((rows, cols), data).expect("rows * cols elements")
}

fn convolve_typed<T: Float>(
    x: &NdArrayTensor,
    weight: &NdArrayTensor,
    bias: &NdArrayTensor,
    options: &ConvOptions<2>,
) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (xv, wv, bv) = (T::view(x)?, T::view(weight)?, T::view(bias)?);
    let p = Plan::of(xv.shape(), wv.shape(), options)?;
    if bv.shape() != [p.c_out] {
        return None;
    }
    let (xs, ws, bs) = (elements(xv), elements(wv), elements(bv));
    let w = mat(&ws, p.c_out, p.k);
    let threads = p.threads();
    let mut out = vec![T::default(); p.g.batch * p.c_out * p.l];
    out.par_chunks_mut(p.c_out * p.l)
        .zip(xs.par_chunks(p.image()))
        .for_each_init(
            || vec![T::default(); p.k * p.l],
            |cols, (o, image)| {
                p.gather(image, cols);
                for (row, &b) in o.chunks_mut(p.l).zip(bs.iter()) {
                    row.fill(b);
                }
                let mut o = mat_mut(o, p.c_out, p.l);
                matmul(w, mat(cols, p.k, p.l), &mut o, T::ONE, true, threads);
            },
        );
    let [h_out, w_out] = p.g.output();
    Some(tensor(out, &[p.g.batch, p.c_out, h_out, w_out]))
}

fn x_grad_typed<T: Float>(
    x: &NdArrayTensor,
    weight: &NdArrayTensor,
    grad: &NdArrayTensor,
    options: &ConvOptions<2>,
) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (xv, wv, gv) = (T::view(x)?, T::view(weight)?, T::view(grad)?);
    let p = Plan::of(xv.shape(), wv.shape(), options)?;
    let [h_out, w_out] = p.g.output();
    if gv.shape() != [p.g.batch, p.c_out, h_out, w_out] {
        return None;
    }
    let (ws, gs) = (elements(wv), elements(gv));
    let w = mat(&ws, p.c_out, p.k);
    let threads = p.threads();
    let plane = p.g.input[0] * p.g.input[1];
    let rows = p.k / p.g.channels * p.l;
    let mut dx = vec![T::default(); p.g.batch * p.image()];
    dx.par_chunks_mut(p.image())
        .zip(gs.par_chunks(p.c_out * p.l))
        .for_each_init(
            || vec![T::default(); p.k * p.l],
            |d_cols, (dx, g)| {
                let mut dc = mat_mut(d_cols, p.k, p.l);
                matmul(w.t(), mat(g, p.c_out, p.l), &mut dc, T::ONE, false, threads);
                for (src, dst) in d_cols.chunks(rows).zip(dx.chunks_mut(plane)) {
                    scatter_plane(&p.g, src, dst);
                }
            },
        );
    Some(tensor(dx, xv.shape()))
}

fn weight_grad_typed<T: Float>(
    x: &NdArrayTensor,
    weight: &NdArrayTensor,
    grad: &NdArrayTensor,
    options: &ConvOptions<2>,
) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (xv, wv, gv) = (T::view(x)?, T::view(weight)?, T::view(grad)?);
    let p = Plan::of(xv.shape(), wv.shape(), options)?;
    let [h_out, w_out] = p.g.output();
    if gv.shape() != [p.g.batch, p.c_out, h_out, w_out] {
        return None;
    }
    let (xs, gs) = (elements(xv), elements(gv));
    let threads = p.threads();
    let zeros = || vec![T::default(); p.c_out * p.k];
    let dw = xs
        .par_chunks(p.image())
        .zip(gs.par_chunks(p.c_out * p.l))
        .fold(
            || (zeros(), vec![T::default(); p.k * p.l]),
            |(mut dw, mut cols), (image, g)| {
                p.gather(image, &mut cols);
                let mut d = mat_mut(&mut dw, p.c_out, p.k);
                matmul(
                    mat(g, p.c_out, p.l),
                    mat(&cols, p.k, p.l).t(),
                    &mut d,
                    T::ONE,
                    true,
                    threads,
                );
                (dw, cols)
            },
        )
        .map(|(dw, _)| dw)
        .reduce(zeros, |mut a, b| {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            a
        });
    Some(tensor(dw, wv.shape()))
}

#[cfg(test)]
mod tests {
    use burn::tensor::ops::{ConvOptions, ModuleOps};
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use crate::TestBackend as B;
    use crate::backend::KernelBackend;
    use crate::backend::{primitive as p, tensor as t};

    /// The host convolution and its input and weight gradients against burn's own (f64), for
    /// 3x3 padded, strided and dilated kernels, a 1x1 kernel and a patch embedding (kernel =
    /// stride), on batches of one and of three images.
    #[test]
    fn host_convolution_matches_burns() {
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        let tol = Tolerance::absolute(1e-12).set_relative(1e-11);
        // (batch, c_in, c_out, k, stride, pad, dilation, h, w)
        let cases = [
            (3, 5, 7, 3, 1, 1, 1, 9, 8),
            (1, 4, 6, 3, 2, 1, 1, 9, 10),
            (3, 6, 3, 1, 1, 0, 1, 7, 5),
            (2, 4, 5, 3, 1, 2, 2, 9, 7),
            (3, 3, 8, 2, 2, 0, 1, 8, 6),
        ];
        for (n, (b, c_in, c_out, k, stride, pad, dilation, h, w)) in cases.into_iter().enumerate() {
            let options = ConvOptions::new([stride; 2], [pad; 2], [dilation; 2], 1);
            let x = Tensor::<B, 4>::random([b, c_in, h, w], normal, &device);
            let weight = Tensor::<B, 4>::random([c_out, c_in, k, k], normal, &device);
            let bias = Tensor::<B, 1>::random([c_out], normal, &device);
            let want: Tensor<B, 4> = t(<B as ModuleOps<B>>::conv2d(
                p(x.clone()),
                p(weight.clone()),
                Some(p(bias.clone())),
                options.clone(),
            ));
            let got: Tensor<B, 4> = t(<B as KernelBackend>::convolve(
                p(x.clone()),
                p(weight.clone()),
                p(bias),
                options.clone(),
            ));
            assert_eq!(got.dims(), want.dims(), "case {n}");
            got.into_data()
                .assert_approx_eq::<f64>(&want.clone().into_data(), tol);

            let grad = want.random_like(normal);
            let args = || {
                (
                    p(x.clone()),
                    p(weight.clone()),
                    p(grad.clone()),
                    options.clone(),
                )
            };
            let (a, b_, c, d) = args();
            let got: Tensor<B, 4> = t(<B as KernelBackend>::conv2d_x_grad(a, b_, c, d));
            let (a, b_, c, d) = args();
            let want: Tensor<B, 4> = t(<B as ModuleOps<B>>::conv2d_x_backward(a, b_, c, d));
            got.into_data()
                .assert_approx_eq::<f64>(&want.into_data(), tol);
            let (a, b_, c, d) = args();
            let got: Tensor<B, 4> = t(<B as KernelBackend>::conv2d_weight_grad(a, b_, c, d));
            let (a, b_, c, d) = args();
            let want: Tensor<B, 4> = t(<B as ModuleOps<B>>::conv2d_weight_backward(a, b_, c, d));
            got.into_data()
                .assert_approx_eq::<f64>(&want.into_data(), tol);
        }
    }
}
