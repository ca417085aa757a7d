//! burn-ndarray's own versions of [`KernelBackend`](super::KernelBackend)'s kernels: one pass
//! over host memory each, on rayon's pool, reading burn-ndarray's arrays in place.
//!
//! burn-ndarray runs most element-wise operations on one thread and allocates a buffer per
//! operation. The portable convolution columns copy the padded input, cut `kh * kw` strided
//! views and stack them (the gradient goes back through as many zero-filled slice assignments),
//! and the SiLU is five operations forward and more backward; on burn-ndarray that was over half
//! of a training step's convolution time and most of its activation time. Here each output
//! element is written once. Other dtypes than f32 and f64 take the portable path.

use std::borrow::Cow;
use std::ops::Range;

use burn::backend::ndarray::NdArrayTensor;
use ndarray::{ArcArray, ArrayD, ArrayViewD, IxDyn, Zip};
use rayon::prelude::*;

use super::columns::Columns;

/// The float types the loops handle, with widening for sums and the SiLU's scalar formulas.
pub(crate) trait Value:
    Copy
    + Default
    + Send
    + Sync
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
where
    NdArrayTensor: From<ArcArray<Self, IxDyn>>,
{
    /// The tensor's array when it holds this type.
    fn view(t: &NdArrayTensor) -> Option<ArrayViewD<'_, Self>>;
    /// Widened, for sums.
    fn wide(self) -> f64;
    /// Narrowed from a wide value.
    fn narrow(v: f64) -> Self;
    /// `x * sigmoid(x)`.
    fn silu(x: Self) -> Self;
    /// `dy * d silu(x) / dx = dy * s (1 + x (1 - s))`, `s = sigmoid(x)`.
    fn silu_grad(x: Self, dy: Self) -> Self;
    /// `e^x`.
    fn exp(self) -> Self;
    /// The natural logarithm.
    fn ln(self) -> Self;
    /// The error function.
    fn erf(self) -> Self;
}

macro_rules! value {
    ($t:ty, $variant:ident, $erf:path) => {
        impl Value for $t {
            fn view(t: &NdArrayTensor) -> Option<ArrayViewD<'_, $t>> {
                match t {
                    NdArrayTensor::$variant(storage) => Some(storage.view()),
                    _ => None,
                }
            }

            #[inline]
            fn wide(self) -> f64 {
                self as f64
            }

            #[inline]
            fn narrow(v: f64) -> $t {
                v as $t
            }

            #[inline]
            fn silu(x: $t) -> $t {
                // exp(-x) overflows to inf for very negative x: x / inf = -0, no NaN.
                x / (1.0 + (-x).exp())
            }

            #[inline]
            fn silu_grad(x: $t, dy: $t) -> $t {
                let s = 1.0 / (1.0 + (-x).exp());
                dy * s * (1.0 + x * (1.0 - s))
            }

            #[inline]
            fn exp(self) -> $t {
                <$t>::exp(self)
            }

            #[inline]
            fn ln(self) -> $t {
                <$t>::ln(self)
            }

            #[inline]
            fn erf(self) -> $t {
                $erf(self)
            }
        }
    };
}
value!(f32, F32, libm::erff);
value!(f64, F64, libm::erf);

/// A tensor's elements in row-major order: borrowed when its layout already is, else copied
/// (on rayon's threads for large tensors).
pub(super) fn elements<T: Value>(view: ArrayViewD<'_, T>) -> Cow<'_, [T]>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    if let Some(slice) = view.to_slice() {
        return Cow::Borrowed(slice);
    }
    if view.len() < CHUNK {
        return Cow::Owned(view.iter().copied().collect());
    }
    let mut out = ArrayD::<T>::default(view.raw_dim());
    Zip::from(&mut out).and(&view).par_for_each(|o, &x| *o = x);
    Cow::Owned(out.into_raw_vec_and_offset().0)
}

/// A row-major buffer as a burn-ndarray tensor.
pub(super) fn tensor<T: Value>(values: Vec<T>, shape: &[usize]) -> NdArrayTensor
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let array = ArcArray::from_shape_vec(IxDyn(shape), values).expect("shape matches the buffer");
    NdArrayTensor::from(array)
}

/// Runs `$f::<T>` for the float type `T` of `$t` (f32 or f64); `None` for other types.
macro_rules! dispatch {
    ($t:expr, $f:ident($($arg:expr),*)) => {
        match $t {
            burn::backend::ndarray::NdArrayTensor::F32(_) => $f::<f32>($($arg),*),
            burn::backend::ndarray::NdArrayTensor::F64(_) => $f::<f64>($($arg),*),
            _ => None,
        }
    };
}
pub(super) use dispatch;

/// [`KernelBackend::im2col`](super::KernelBackend::im2col); `None` for other dtypes.
pub(crate) fn im2col(x: &NdArrayTensor, g: &Columns) -> Option<NdArrayTensor> {
    dispatch!(x, im2col_typed(x, g))
}

/// [`KernelBackend::col2im`](super::KernelBackend::col2im); `None` for other dtypes.
pub(crate) fn col2im(columns: &NdArrayTensor, g: &Columns) -> Option<NdArrayTensor> {
    dispatch!(columns, col2im_typed(columns, g))
}

/// [`KernelBackend::silu`](super::KernelBackend::silu); `None` for other dtypes.
pub(crate) fn silu(x: &NdArrayTensor) -> Option<NdArrayTensor> {
    dispatch!(x, silu_typed(x))
}

/// [`KernelBackend::silu_backward`](super::KernelBackend::silu_backward); `None` for other or
/// mixed dtypes.
pub(crate) fn silu_backward(x: &NdArrayTensor, grad: &NdArrayTensor) -> Option<NdArrayTensor> {
    dispatch!(x, silu_backward_typed(x, grad))
}

/// Elements per rayon task of the element-wise kernels.
const CHUNK: usize = 1 << 14;

fn silu_typed<T: Value>(x: &NdArrayTensor) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let view = T::view(x)?;
    let shape = view.shape().to_vec();
    let xs = elements(view);
    let mut out = vec![T::default(); xs.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = T::silu(x)));
    Some(tensor(out, &shape))
}

fn silu_backward_typed<T: Value>(x: &NdArrayTensor, grad: &NdArrayTensor) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (xv, gv) = (T::view(x)?, T::view(grad)?);
    if xv.shape() != gv.shape() {
        return None;
    }
    let shape = xv.shape().to_vec();
    let (xs, gs) = (elements(xv), elements(gv));
    let mut out = vec![T::default(); xs.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
        .for_each(|(o, (x, g))| {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                *o = T::silu_grad(x, g);
            }
        });
    Some(tensor(out, &shape))
}

/// [`KernelBackend::geglu`](super::KernelBackend::geglu); `None` for other dtypes or ranks.
pub(crate) fn geglu(x: &NdArrayTensor) -> Option<NdArrayTensor> {
    dispatch!(x, geglu_typed(x))
}

/// [`KernelBackend::geglu_backward`](super::KernelBackend::geglu_backward); `None` for other
/// or mixed dtypes and shapes.
pub(crate) fn geglu_backward(x: &NdArrayTensor, grad: &NdArrayTensor) -> Option<NdArrayTensor> {
    dispatch!(x, geglu_backward_typed(x, grad))
}

/// `(gelu(g), gelu'(g))` of the exact GELU `g Phi(g)`: `Phi(g) + g phi(g)`.
#[inline]
fn gelu_and_slope<T: Value>(g: T) -> (T, T)
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let half = T::narrow(0.5);
    let cdf = half * (T::narrow(1.0) + (g * T::narrow(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let density = (T::narrow(-0.5) * g * g).exp() * T::narrow(0.398_942_280_401_432_7);
    (g * cdf, cdf + g * density)
}

/// The `[rows, 2 n]` elements of a GEGLU input and `n`.
fn geglu_input<T: Value>(x: &NdArrayTensor) -> Option<(Cow<'_, [T]>, usize, usize)>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let view = T::view(x)?;
    match *view.shape() {
        [rows, width] if width % 2 == 0 && width > 0 => Some((elements(view), rows, width / 2)),
        _ => None,
    }
}

fn geglu_typed<T: Value>(x: &NdArrayTensor) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (xs, rows, n) = geglu_input::<T>(x)?;
    let mut out = vec![T::default(); rows * n];
    let rows_per_task = (CHUNK / n).max(1);
    out.par_chunks_mut(rows_per_task * n)
        .zip(xs.par_chunks(rows_per_task * 2 * n))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(n).zip(x.chunks(2 * n)) {
                let (hidden, gate) = x.split_at(n);
                for ((o, &a), &g) in o.iter_mut().zip(hidden).zip(gate) {
                    *o = a * gelu_and_slope(g).0;
                }
            }
        });
    Some(tensor(out, &[rows, n]))
}

fn geglu_backward_typed<T: Value>(x: &NdArrayTensor, grad: &NdArrayTensor) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (xs, rows, n) = geglu_input::<T>(x)?;
    let gv = T::view(grad)?;
    if gv.shape() != [rows, n] {
        return None;
    }
    let gs = elements(gv);
    let mut out = vec![T::default(); rows * 2 * n];
    let rows_per_task = (CHUNK / n).max(1);
    out.par_chunks_mut(rows_per_task * 2 * n)
        .zip(xs.par_chunks(rows_per_task * 2 * n))
        .zip(gs.par_chunks(rows_per_task * n))
        .for_each(|((o, x), g)| {
            for ((o, x), g) in o.chunks_mut(2 * n).zip(x.chunks(2 * n)).zip(g.chunks(n)) {
                let (hidden, gate) = x.split_at(n);
                let (d_hidden, d_gate) = o.split_at_mut(n);
                for i in 0..n {
                    let (gelu, slope) = gelu_and_slope(gate[i]);
                    d_hidden[i] = g[i] * gelu;
                    d_gate[i] = g[i] * hidden[i] * slope;
                }
            }
        });
    Some(tensor(out, &[rows, 2 * n]))
}

/// For output index `o` along one axis and tap `k`: the input index, or `None` in the padding.
fn source(
    o: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    size: usize,
) -> Option<usize> {
    (o * stride + k * dilation)
        .checked_sub(pad)
        .filter(|&i| i < size)
}

/// The output indices `o` whose input index for tap `k` lies inside `0..size` (a range: the
/// input index grows with `o`).
fn valid(
    out: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    size: usize,
) -> Range<usize> {
    let inside = |o: &usize| source(*o, k, stride, dilation, pad, size).is_some();
    match (0..out).find(inside) {
        Some(s) => s..(s..out).take_while(inside).last().map_or(s, |e| e + 1),
        None => 0..0,
    }
}

/// Calls `f(tap, oy, iy, xs, x0)` for every kernel tap `(i, j)` (`tap = i * kw + j`) and every
/// output row `oy` whose input row `iy` lies inside the image: output columns `xs` read input
/// columns `x0, x0 + sw, ...`.
fn for_each_tap_row(g: &Columns, mut f: impl FnMut(usize, usize, usize, Range<usize>, usize)) {
    let ([h, w], [h_out, w_out]) = (g.input, g.output());
    let ([kh, kw], [sh, sw], [dh, dw]) = (g.kernel, g.stride, g.dilation);
    let [top, left, ..] = g.padding;
    for i in 0..kh {
        for j in 0..kw {
            let xs = valid(w_out, j, sw, dw, left, w);
            if xs.is_empty() {
                continue;
            }
            let x0 = xs.start * sw + j * dw - left;
            for oy in valid(h_out, i, sh, dh, top, h) {
                f(i * kw + j, oy, oy * sh + i * dh - top, xs.clone(), x0);
            }
        }
    }
}

/// One channel's kernel windows: `plane` `[h, w]` into `dst` `[taps, h_out * w_out]` (every
/// element of `dst` written, padding as zeros when `dst` starts zeroed).
pub(super) fn gather_plane<T: Value>(g: &Columns, plane: &[T], dst: &mut [T])
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let ([_, w], [h_out, w_out], sw) = (g.input, g.output(), g.stride[1]);
    let l = h_out * w_out;
    for_each_tap_row(g, |tap, oy, iy, xs, x0| {
        let row = &plane[iy * w..][..w];
        let out_row = &mut dst[tap * l + oy * w_out..][..w_out];
        if sw == 1 {
            out_row[xs.clone()].copy_from_slice(&row[x0..x0 + xs.len()]);
        } else {
            for (n, ox) in xs.enumerate() {
                out_row[ox] = row[x0 + n * sw];
            }
        }
    });
}

/// The adjoint of [`gather_plane`]: adds `src` `[taps, h_out * w_out]` back into the channel's
/// `plane` `[h, w]`.
pub(super) fn scatter_plane<T: Value>(g: &Columns, src: &[T], plane: &mut [T])
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let ([_, w], [h_out, w_out], sw) = (g.input, g.output(), g.stride[1]);
    let l = h_out * w_out;
    for_each_tap_row(g, |tap, oy, iy, xs, x0| {
        let row = &mut plane[iy * w..][..w];
        let in_row = &src[tap * l + oy * w_out..][..w_out];
        for (n, ox) in xs.enumerate() {
            row[x0 + n * sw] += in_row[ox];
        }
    });
}

fn im2col_typed<T: Value>(x: &NdArrayTensor, g: &Columns) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let view = T::view(x)?;
    if view.shape() != g.input_shape() {
        return None;
    }
    let x = elements(view);
    let ([h, w], [h_out, w_out]) = (g.input, g.output());
    let l = h_out * w_out;
    let shape = g.shape();
    let mut out = vec![T::default(); shape.iter().product()];
    if l > 0 && h * w > 0 {
        out.par_chunks_mut(g.taps() * l)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, plane)| gather_plane(g, plane, dst));
    }
    Some(tensor(out, &shape))
}

fn col2im_typed<T: Value>(columns: &NdArrayTensor, g: &Columns) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let view = T::view(columns)?;
    if view.shape() != g.shape() {
        return None;
    }
    let cols = elements(view);
    let ([h, w], [h_out, w_out]) = (g.input, g.output());
    let l = h_out * w_out;
    let shape = g.input_shape();
    let mut out = vec![T::default(); shape.iter().product()];
    if l > 0 && h * w > 0 {
        out.par_chunks_mut(h * w)
            .zip(cols.par_chunks(g.taps() * l))
            .for_each(|(plane, src)| scatter_plane(g, src, plane));
    }
    Some(tensor(out, &shape))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use super::super::{KernelBackend, activation, columns};
    use super::Columns;
    use crate::TestBackend as B;
    use crate::backend::{primitive as p, tensor as t};

    fn geometries() -> Vec<Columns> {
        let g = |channels, input, kernel, stride, dilation, padding| Columns {
            batch: 2,
            channels,
            input,
            kernel,
            stride,
            dilation,
            padding,
        };
        vec![
            g(3, [9, 8], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            g(2, [9, 10], [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            g(4, [7, 5], [1, 1], [1, 1], [1, 1], [0, 0, 0, 0]),
            g(3, [8, 6], [2, 2], [2, 2], [1, 1], [0, 0, 0, 0]),
            g(2, [9, 7], [3, 2], [1, 2], [2, 1], [2, 0, 1, 1]),
            // Padding wider than the kernel's reach: rows and columns of pure padding.
            g(1, [3, 4], [2, 3], [3, 1], [1, 2], [3, 2, 4, 3]),
        ]
    }

    /// The host loops against the portable tensor-operation versions: im2col exactly (both
    /// only copy), col2im to rounding (both add the taps in the same order).
    #[test]
    fn host_columns_match_the_portable_operations() {
        let device = Default::default();
        for (n, g) in geometries().into_iter().enumerate() {
            let x =
                Tensor::<B, 4>::random(g.input_shape(), Distribution::Normal(0.0, 1.0), &device);
            let want: Tensor<B, 3> = t(columns::im2col::<B>(p(x.clone()), &g));
            let got: Tensor<B, 3> = t(B::im2col(p(x), &g));
            assert_eq!(got.dims(), g.shape(), "case {n}");
            got.into_data().assert_eq(&want.into_data(), true);

            let c = Tensor::<B, 3>::random(g.shape(), Distribution::Normal(0.0, 1.0), &device);
            let want: Tensor<B, 4> = t(columns::col2im::<B>(p(c.clone()), &g));
            let got: Tensor<B, 4> = t(B::col2im(p(c), &g));
            assert_eq!(got.dims(), g.input_shape(), "case {n}");
            got.into_data()
                .assert_approx_eq::<f64>(&want.into_data(), Tolerance::absolute(1e-12));
        }
    }

    /// col2im is the adjoint of im2col: `<im2col(x), c> = <x, col2im(c)>`, also on a
    /// non-contiguous (transposed) input.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let device = Default::default();
        for (n, g) in geometries().into_iter().enumerate() {
            let [b, c, h, w] = g.input_shape();
            let x = Tensor::<B, 4>::random([b, c, w, h], Distribution::Normal(0.0, 1.0), &device)
                .swap_dims(2, 3);
            let cols = Tensor::<B, 3>::random(g.shape(), Distribution::Normal(0.0, 1.0), &device);
            let gathered: Tensor<B, 3> = t(B::im2col(p(x.clone()), &g));
            let scattered: Tensor<B, 4> = t(B::col2im(p(cols.clone()), &g));
            let lhs = (gathered * cols).sum().into_scalar();
            let rhs = (x * scattered).sum().into_scalar();
            assert!(
                (lhs - rhs).abs() <= 1e-10 * lhs.abs().max(1.0),
                "case {n}: {lhs} vs {rhs}"
            );
        }
    }

    /// A large strided view's elements, copied on rayon's threads, come out in row-major order
    /// (what `iter()` visits), and a row-major view is borrowed.
    #[test]
    fn elements_of_a_strided_view_are_in_row_major_order() {
        let a =
            ndarray::Array3::from_shape_fn((40, 30, 20), |(i, j, k)| (i * 600 + j * 20 + k) as f64);
        let view = a.view().permuted_axes([2, 0, 1]).into_dyn();
        let want: Vec<f64> = view.iter().copied().collect();
        let got = super::elements(view);
        assert!(matches!(got, std::borrow::Cow::Owned(_)));
        assert_eq!(&*got, &want[..]);
        assert!(matches!(
            super::elements(a.view().into_dyn()),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// The host GEGLU and its gradient against the portable compositions (which other backends
    /// run), including gates far in both tails.
    #[test]
    fn host_geglu_matches_the_portable_composition() {
        let device = Default::default();
        let x = Tensor::<B, 2>::random([9, 12], Distribution::Normal(0.0, 3.0), &device);
        let x = x.slice_assign([0..1, 6..8], Tensor::from_floats([[-40.0, 40.0]], &device));
        let dy = Tensor::<B, 2>::random([9, 6], Distribution::Normal(0.0, 1.0), &device);
        let tol = Tolerance::absolute(1e-12).set_relative(1e-12);
        let want: Tensor<B, 2> = t(activation::geglu::<B>(p(x.clone())));
        let got: Tensor<B, 2> = t(B::geglu(p(x.clone())));
        got.into_data()
            .assert_approx_eq::<f64>(&want.into_data(), tol);
        let want: Tensor<B, 2> = t(activation::geglu_backward::<B>(p(x.clone()), p(dy.clone())));
        let got: Tensor<B, 2> = t(B::geglu_backward(p(x), p(dy)));
        got.into_data()
            .assert_approx_eq::<f64>(&want.into_data(), tol);
    }

    /// The host SiLU and its gradient against the portable compositions, including values far
    /// in both tails.
    #[test]
    fn host_silu_matches_the_portable_composition() {
        let device = Default::default();
        let x = Tensor::<B, 3>::random([3, 5, 7], Distribution::Normal(0.0, 4.0), &device);
        let x = x.slice_assign(
            [0..1, 0..1, 0..2],
            Tensor::from_floats([[[-800.0, 800.0]]], &device),
        );
        let dy = Tensor::<B, 3>::random([3, 5, 7], Distribution::Normal(0.0, 1.0), &device);
        let tol = Tolerance::absolute(1e-12).set_relative(1e-12);
        let want: Tensor<B, 3> = t(activation::silu::<B>(p(x.clone())));
        let got: Tensor<B, 3> = t(B::silu(p(x.clone())));
        got.into_data()
            .assert_approx_eq::<f64>(&want.into_data(), tol);
        let want: Tensor<B, 3> = t(activation::silu_backward::<B>(p(x.clone()), p(dy.clone())));
        let got: Tensor<B, 3> = t(B::silu_backward(p(x), p(dy)));
        got.into_data()
            .assert_approx_eq::<f64>(&want.into_data(), tol);
    }
}
