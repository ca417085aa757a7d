//! [`KernelBackend`]: the per-backend choices this crate makes (how convolutions run, whether
//! the backend computes in half precision), as a backend extension trait implemented for each
//! backend the cargo features add, the way burn's own extension traits are.
//!
//! Code asks `B::CONV_PATH` or `B::HALF_PRECISION`, and gathers convolution windows with
//! `B::im2col`; nothing matches backend names. `Autodiff<B>` and `Fusion<B>` answer what `B`
//! answers; `Autodiff<B>` differentiates `im2col` and `col2im` as each other's adjoint.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

pub mod activation;
mod autodiff;
pub mod columns;
#[cfg(feature = "ndarray")]
mod host;

pub use columns::Columns;

/// How [`conv2d`](crate::nn::conv2d) computes a 2-D convolution on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPath {
    /// burn's own convolution (autotuned implicit GEMM on cubecl backends).
    Native,
    /// im2col + matmul ([`im2col_conv2d`](crate::nn::im2col_conv2d)) for kernels whose windows
    /// overlap and for 1x1 kernels, burn's convolution for patch embeddings: burn-ndarray,
    /// whose own convolution backward is slow.
    Im2colOverlapping,
    /// im2col + matmul for every convolution it handles: cubecl built without autotuning,
    /// whose untuned convolution is its slow direct kernel.
    Im2col,
}

/// The kernels and capabilities this crate picks per backend.
///
/// Implemented for burn-ndarray, cubecl's `CubeBackend` (what `Wgpu` and `Cuda` are), `Fusion`,
/// burn-tch's `LibTorch` and `Autodiff` over any of them. A backend of your own implements it with the defaults
/// (`impl KernelBackend for MyBackend {}`) or its own answers.
pub trait KernelBackend: Backend {
    /// How 2-D convolutions run.
    const CONV_PATH: ConvPath = ConvPath::Native;
    /// Whether the backend computes in bf16 and f16, which mixed-precision training needs.
    const HALF_PRECISION: bool = true;

    /// Every kernel window of `x` as a column (see [`Columns`] for the layout); the default
    /// is [`columns::im2col`] in burn tensor operations.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`; returns [`Columns::shape`]
    fn im2col(x: FloatTensor<Self>, columns: &Columns) -> FloatTensor<Self> {
        columns::im2col::<Self>(x, columns)
    }

    /// Columns added back into their windows (the adjoint of [`im2col`](Self::im2col)); the
    /// default is [`columns::col2im`] in burn tensor operations.
    ///
    /// # Shapes
    /// - `columns`: [`Columns::shape`]; returns `[batch, channels, height, width]`
    fn col2im(columns: FloatTensor<Self>, geometry: &Columns) -> FloatTensor<Self> {
        columns::col2im::<Self>(columns, geometry)
    }

    /// `x * sigmoid(x)` element-wise, any rank; the default is [`activation::silu`].
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        activation::silu::<Self>(x)
    }

    /// The SiLU's backward `grad * s (1 + x (1 - s))`, `s = sigmoid(x)`; the default is
    /// [`activation::silu_backward`].
    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        activation::silu_backward::<Self>(x, grad)
    }
}

#[cfg(feature = "ndarray")]
mod ndarray_impl {
    use burn::backend::NdArray;
    use burn::backend::ndarray::{
        FloatNdArrayElement, IntNdArrayElement, NdArrayTensor, QuantElement, SharedArray,
    };
    use burn::tensor::ops::FloatTensor;

    use super::{Columns, ConvPath, KernelBackend, activation, columns, host};

    /// burn-ndarray's convolution backward is slow (two shapes UNet training steps: 45.8 s
    /// with it, 7.4 s with im2col on 2 cores), and it has no bf16/f16 kernels; its columns
    /// are gathered in one pass over host memory.
    impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> KernelBackend
        for NdArray<E, I, Q>
    where
        NdArrayTensor: From<SharedArray<E>>,
        NdArrayTensor: From<SharedArray<I>>,
    {
        const CONV_PATH: ConvPath = ConvPath::Im2colOverlapping;
        const HALF_PRECISION: bool = false;

        fn im2col(x: FloatTensor<Self>, geometry: &Columns) -> FloatTensor<Self> {
            host::im2col(&x, geometry).unwrap_or_else(|| columns::im2col::<Self>(x, geometry))
        }

        fn col2im(cols: FloatTensor<Self>, geometry: &Columns) -> FloatTensor<Self> {
            host::col2im(&cols, geometry).unwrap_or_else(|| columns::col2im::<Self>(cols, geometry))
        }

        fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            host::silu(&x).unwrap_or_else(|| activation::silu::<Self>(x))
        }

        fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            host::silu_backward(&x, &grad)
                .unwrap_or_else(|| activation::silu_backward::<Self>(x, grad))
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
mod cube_impl {
    use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
    use burn_fusion::{Fusion, FusionBackend};

    use super::{ConvPath, KernelBackend};

    /// Whether burn-cubecl is built without autotuning: `cuda-untuned` is the only cubecl
    /// feature (`cuda` and `wgpu` turn burn's autotuning on for every cubecl backend of the
    /// build).
    const UNTUNED_CUBECL: bool = cfg!(all(
        feature = "cuda-untuned",
        not(feature = "cuda"),
        not(feature = "wgpu")
    ));

    /// Untuned cubecl convolves with its direct kernel (SD 2.1 step 9 s on an H200); its
    /// matmul is the faster route there.
    impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> KernelBackend
        for CubeBackend<R, F, I, BT>
    {
        const CONV_PATH: ConvPath = if UNTUNED_CUBECL {
            ConvPath::Im2col
        } else {
            ConvPath::Native
        };
    }

    /// Fusion's columns are the portable ones (its fused graph sees the slices).
    impl<B: FusionBackend + KernelBackend> KernelBackend for Fusion<B> {
        const CONV_PATH: ConvPath = B::CONV_PATH;
        const HALF_PRECISION: bool = B::HALF_PRECISION;
    }
}

#[cfg(feature = "tch")]
mod tch_impl {
    use burn_tch::{LibTorch, TchElement};

    use super::KernelBackend;

    /// LibTorch's own convolution (oneDNN on the CPU, cuDNN on CUDA) and half types.
    impl<E: TchElement> KernelBackend for LibTorch<E> {}
}
