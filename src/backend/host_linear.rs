//! burn-ndarray's own linear layer kernels: `x W + b` and its three gradients as one matrix
//! product each over `x` viewed as `[rows, in]`, read where it lies.
//!
//! burn's default linear on burn-ndarray broadcasts the weight to `x`'s rank and calls the
//! batched matmul, which copies both operands into fresh row-major arrays and copies its output
//! once more in a final reshape; the backward multiplies by transposed copies of the weight and
//! of `x`. Every projection of the UNet's and the MMDiT's transformer blocks (and every LoRA
//! factor) is such a layer. Here the only buffers are the outputs.

use std::borrow::Cow;

use burn::backend::ndarray::NdArrayTensor;
use ndarray::{ArcArray, ArrayView2, ArrayViewMut2, Axis, IxDyn};
use rayon::prelude::*;

use super::host::{dispatch, elements, tensor};
use super::host_gemm::{Float, Threads, matmul};

/// [`KernelBackend::linear_layer`](super::KernelBackend::linear_layer); `None` for other or mixed dtypes
/// and shapes it does not take.
pub(crate) fn linear(
    x: &NdArrayTensor,
    weight: &NdArrayTensor,
    bias: Option<&NdArrayTensor>,
) -> Option<NdArrayTensor> {
    dispatch!(x, linear_typed(x, weight, bias))
}

/// [`KernelBackend::linear_layer_x_grad`](super::KernelBackend::linear_layer_x_grad).
pub(crate) fn x_backward(weight: &NdArrayTensor, grad: &NdArrayTensor) -> Option<NdArrayTensor> {
    dispatch!(grad, x_backward_typed(weight, grad))
}

/// [`KernelBackend::linear_layer_weight_grad`](super::KernelBackend::linear_layer_weight_grad).
pub(crate) fn weight_backward(x: &NdArrayTensor, grad: &NdArrayTensor) -> Option<NdArrayTensor> {
    dispatch!(grad, weight_backward_typed(x, grad))
}

/// [`KernelBackend::linear_layer_bias_grad`](super::KernelBackend::linear_layer_bias_grad).
pub(crate) fn bias_backward(grad: &NdArrayTensor) -> Option<NdArrayTensor> {
    dispatch!(grad, bias_backward_typed(grad))
}

/// A tensor of rank 2 or more as a `[rows, last]` matrix, with its shape: borrowed when its
/// layout is row-major, else copied.
struct Rows<'a, T: Clone> {
    data: Cow<'a, [T]>,
    shape: Vec<usize>,
}

impl<'a, T: Float> Rows<'a, T>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    fn of(t: &'a NdArrayTensor) -> Option<Self> {
        let view = T::view(t)?;
        let shape = view.shape().to_vec();
        (shape.len() >= 2).then(|| Self {
            data: elements(view),
            shape,
        })
    }

    fn cols(&self) -> usize {
        self.shape[self.shape.len() - 1]
    }

    fn rows(&self) -> usize {
        self.shape[..self.shape.len() - 1].iter().product()
    }

    fn matrix(&self) -> ArrayView2<'_, T> {
        ArrayView2::from_shape((self.rows(), self.cols()), &self.data)
            .expect("rows * cols elements")
    }
}

/// A rank-2 view of `t` when it holds `T`.
fn view2<T: Float>(t: &NdArrayTensor) -> Option<ArrayView2<'_, T>>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    T::view(t)?.into_dimensionality().ok()
}

/// `out = a b` into a fresh `[m, n]` buffer (`out = a b + out` when `init` fills it first).
fn product<T: Float>(a: ArrayView2<T>, b: ArrayView2<T>, init: Option<&[T]>) -> Vec<T>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (m, n) = (a.nrows(), b.ncols());
    let mut out = vec![T::default(); m * n];
    if let Some(row) = init {
        out.par_chunks_mut(n).for_each(|o| o.copy_from_slice(row));
    }
    let mut c = ArrayViewMut2::from_shape((m, n), &mut out).expect("m * n elements");
    matmul(a, b, &mut c, T::ONE, init.is_some(), Threads::All);
    out
}

fn linear_typed<T: Float>(
    x: &NdArrayTensor,
    weight: &NdArrayTensor,
    bias: Option<&NdArrayTensor>,
) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let x = Rows::<T>::of(x)?;
    let w = view2::<T>(weight)?;
    if w.nrows() != x.cols() {
        return None;
    }
    let bias = match bias {
        Some(b) => {
            let b = T::view(b)?;
            if b.shape() != [w.ncols()] {
                return None;
            }
            Some(elements(b))
        }
        None => None,
    };
    let out = product(x.matrix(), w, bias.as_deref());
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("rank 2 or more") = w.ncols();
    Some(tensor(out, &shape))
}

fn x_backward_typed<T: Float>(weight: &NdArrayTensor, grad: &NdArrayTensor) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let g = Rows::<T>::of(grad)?;
    let w = view2::<T>(weight)?;
    if w.ncols() != g.cols() {
        return None;
    }
    let out = product(g.matrix(), w.t(), None);
    let mut shape = g.shape.clone();
    *shape.last_mut().expect("rank 2 or more") = w.nrows();
    Some(tensor(out, &shape))
}

fn weight_backward_typed<T: Float>(x: &NdArrayTensor, grad: &NdArrayTensor) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (x, g) = (Rows::<T>::of(x)?, Rows::<T>::of(grad)?);
    if x.rows() != g.rows() {
        return None;
    }
    let out = product(x.matrix().t(), g.matrix(), None);
    Some(tensor(out, &[x.cols(), g.cols()]))
}

/// Rows per task of the bias gradient's column sums.
const SUM_ROWS: usize = 256;

fn bias_backward_typed<T: Float>(grad: &NdArrayTensor) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let g = Rows::<T>::of(grad)?;
    let n = g.cols();
    let matrix = g.matrix();
    let sums = matrix
        .axis_chunks_iter(Axis(0), SUM_ROWS.max(1))
        .into_par_iter()
        .map(|rows| {
            let mut acc = vec![T::default(); n];
            for row in rows.outer_iter() {
                acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
            }
            acc
        })
        .reduce(
            || vec![T::default(); n],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        );
    Some(tensor(sums, &[n]))
}

#[cfg(test)]
mod tests {
    use burn::tensor::ops::ModuleOps;
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use crate::TestBackend as B;
    use crate::backend::KernelBackend;
    use crate::backend::{primitive as p, tensor as t};

    /// The host kernels against burn's own linear and its backward functions (f64), for a
    /// rank-3 row-major input, a transposed (not row-major) one, with and without a bias.
    #[test]
    fn host_linear_matches_burns() {
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        let tol = Tolerance::absolute(1e-12).set_relative(1e-12);
        let plain = Tensor::<B, 3>::random([2, 5, 7], normal, &device);
        let transposed = Tensor::<B, 3>::random([2, 7, 5], normal, &device).swap_dims(1, 2);
        let weight = Tensor::<B, 2>::random([7, 4], normal, &device);
        let bias = Tensor::<B, 1>::random([4], normal, &device);
        let grad = Tensor::<B, 3>::random([2, 5, 4], normal, &device);
        for x in [plain, transposed] {
            for b in [Some(bias.clone()), None] {
                let want: Tensor<B, 3> = t(<B as ModuleOps<B>>::linear(
                    p(x.clone()),
                    p(weight.clone()),
                    b.clone().map(p),
                ));
                let got: Tensor<B, 3> = t(<B as KernelBackend>::linear_layer(
                    p(x.clone()),
                    p(weight.clone()),
                    b.map(p),
                ));
                got.into_data()
                    .assert_approx_eq::<f64>(&want.into_data(), tol);
            }
            let pairs: [(Tensor<B, 3>, Tensor<B, 3>); 1] = [(
                t(<B as KernelBackend>::linear_layer_x_grad(
                    p(weight.clone()),
                    p(grad.clone()),
                )),
                t(<B as ModuleOps<B>>::linear_x_backward(
                    p(weight.clone()),
                    p(grad.clone()),
                )),
            )];
            for (got, want) in pairs {
                got.into_data()
                    .assert_approx_eq::<f64>(&want.into_data(), tol);
            }
            let got: Tensor<B, 2> = t(<B as KernelBackend>::linear_layer_weight_grad(
                p(x.clone()),
                p(grad.clone()),
            ));
            let want: Tensor<B, 2> = t(<B as ModuleOps<B>>::linear_weight_backward(
                p(x.clone()),
                p(grad.clone()),
            ));
            got.into_data()
                .assert_approx_eq::<f64>(&want.into_data(), tol);
        }
        let got: Tensor<B, 1> = t(<B as KernelBackend>::linear_layer_bias_grad(
            p(grad.clone()),
        ));
        let want: Tensor<B, 1> = t(<B as ModuleOps<B>>::linear_bias_backward(p(grad)));
        got.into_data()
            .assert_approx_eq::<f64>(&want.into_data(), tol);
    }
}
