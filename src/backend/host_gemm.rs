//! Matrix products of the ndarray backend's host kernels, by the `gemm` crate on strided views.
//!
//! `gemm` picks its kernel at run time (AVX-512 where the CPU has it, with the `x86-v4`
//! feature; AVX2 + FMA; scalar) and reads any row and column strides, so transposed operands
//! are never copied. burn-ndarray's own matmul goes through `matrixmultiply`, whose x86 kernels
//! stop at AVX2.

use burn::backend::ndarray::NdArrayTensor;
use gemm::Parallelism;
use ndarray::{ArcArray, ArrayView2, ArrayViewMut2, IxDyn, LinalgScalar};

use super::host::Value;

/// Products below this many multiply-adds run on the calling thread.
const PARALLEL_WORK: usize = 1 << 16;

/// The float types `gemm` multiplies (f32 and f64).
pub(crate) trait GemmFloat: Copy + Send + Sync + 'static {
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
}

impl GemmFloat for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
}

impl GemmFloat for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
}

/// The float types of the host kernels that multiply matrices: [`Value`]'s that `gemm`
/// multiplies, with ndarray's scalar arithmetic and comparisons.
pub(super) trait Float: Value + GemmFloat + LinalgScalar + PartialOrd
where
    NdArrayTensor: From<ArcArray<Self, IxDyn>>,
{
}

impl<T: Value + GemmFloat + LinalgScalar + PartialOrd> Float for T where
    NdArrayTensor: From<ArcArray<Self, IxDyn>>
{
}

/// How a product's threads are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// Every rayon thread for large products (the caller runs one product at a time).
    All,
    /// The calling thread only (the caller already runs products in parallel).
    One,
}

/// `c = scale * a b`, or `c += scale * a b` with `accumulate`.
///
/// # Panics
/// If the shapes do not chain (`a [m, k]`, `b [k, n]`, `c [m, n]`).
pub(crate) fn matmul<T: GemmFloat>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    c: &mut ArrayViewMut2<'_, T>,
    scale: T,
    accumulate: bool,
    threads: Threads,
) {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(
        k == k2 && c.dim() == (m, n),
        "matmul shapes [{m}, {k}] x [{k2}, {n}] -> {:?}",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(T::ZERO);
        }
        return;
    }
    let parallelism = match threads {
        Threads::All if m * n * k >= PARALLEL_WORK => Parallelism::Rayon(0),
        _ => Parallelism::None,
    };
    let (cs, (a_s, b_s)) = (c.strides().to_vec(), (a.strides(), b.strides()));
    // SAFETY: the three pointers and strides come from live ndarray views whose shapes were
    // checked to be [m, k], [k, n] and [m, n] above, so every element gemm reads or writes lies
    // inside its view; `c` is borrowed mutably, so it aliases neither input. gemm computes
    // `dst = alpha * dst + beta * lhs * rhs`, reading `dst` only when `read_dst` is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            cs[1],
            cs[0],
            accumulate,
            a.as_ptr(),
            a_s[1],
            a_s[0],
            b.as_ptr(),
            b_s[1],
            b_s[0],
            T::ONE,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, s};

    /// Against a triple loop, for row-major, transposed and sliced operands, overwriting and
    /// accumulating, on one thread and on all.
    #[test]
    fn matches_the_definition() {
        let value = |i: usize, j: usize, salt: usize| ((i * 7 + j * 3 + salt) % 11) as f64 - 5.0;
        let a = Array2::from_shape_fn((9, 40), |(i, j)| value(i, j, 1));
        let bt = Array2::from_shape_fn((13, 40), |(i, j)| value(i, j, 2));
        let (a, b) = (
            a.slice(s![..7, ..33]),
            bt.slice(s![..11, ..33]).reversed_axes(),
        );
        let want = Array2::from_shape_fn((7, 11), |(i, j)| {
            (0..33).map(|l| a[[i, l]] * b[[l, j]]).sum::<f64>()
        });
        for threads in [Threads::One, Threads::All] {
            let mut c = Array2::<f64>::from_elem((7, 11), 1.0);
            matmul(a, b, &mut c.view_mut(), 2.0, false, threads);
            assert_eq!(c, want.mapv(|v| 2.0 * v));
            matmul(a, b, &mut c.view_mut(), 1.0, true, threads);
            assert_eq!(c, want.mapv(|v| 3.0 * v));
            // Into a transposed destination.
            let mut ct = Array2::<f64>::zeros((11, 7));
            matmul(
                a,
                b,
                &mut ct.view_mut().reversed_axes(),
                1.0,
                false,
                threads,
            );
            assert_eq!(ct.reversed_axes(), want);
        }
    }
}
