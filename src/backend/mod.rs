//! [`KernelBackend`]: the per-backend choices this crate makes (how convolutions run, whether
//! the backend computes in half precision), as a backend extension trait implemented for each
//! backend the cargo features add, the way burn's own extension traits are.
//!
//! Code asks `B::CONV_PATH` or `B::HALF_PRECISION`, gathers convolution windows with
//! `B::im2col` and normalises with `B::group_norm`; nothing matches backend names.
//! `Autodiff<B>` and `Fusion<B>` answer what `B` answers; `Autodiff<B>` differentiates
//! `im2col` and `col2im` as each other's adjoint.

use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{Tensor, TensorPrimitive};

pub mod activation;
mod autodiff;
pub mod columns;
#[cfg(feature = "ndarray")]
mod host;
#[cfg(feature = "ndarray")]
pub(crate) mod host_attention;
#[cfg(feature = "ndarray")]
mod host_conv;
#[cfg(feature = "ndarray")]
mod host_gemm;
#[cfg(feature = "ndarray")]
mod host_linear;
#[cfg(feature = "ndarray")]
mod host_norm;
pub mod norm;

pub use columns::Columns;

/// Wraps a float primitive in a tensor (the kernels here take and return primitives).
pub(crate) fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Unwraps a float tensor's primitive.
pub(crate) fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// How [`conv2d`](crate::nn::conv2d) computes a 2-D convolution on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPath {
    /// burn's own convolution (autotuned implicit GEMM on cubecl backends).
    Native,
    /// The backend's convolution and input gradient, with the weight gradient from
    /// [`KernelBackend::conv2d_weight_grad`] ([`KernelBackend::convolve`]): LibTorch, for which
    /// burn's default weight gradient (a convolution whose kernel is the output gradient) is
    /// cuDNN's slow path.
    NativeOwnWeightGrad,
    /// im2col + matmul ([`im2col_conv2d`](crate::nn::im2col_conv2d)) for kernels whose windows
    /// overlap and for 1x1 kernels, burn's convolution for patch embeddings: burn-ndarray,
    /// whose own convolution backward is slow.
    Im2colOverlapping,
    /// [`KernelBackend::convolve`] and its three gradients (the input's from
    /// [`KernelBackend::conv2d_x_grad`]) for ungrouped convolutions with symmetric padding;
    /// im2col for the rest: burn-ndarray, whose own kernels do it in place per image.
    Kernel,
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

    /// diffusers' GEGLU after its projection, `hidden * gelu(gate)` (exact GELU) for
    /// `x = [hidden, gate]`; the default is [`activation::geglu`].
    ///
    /// # Shapes
    /// - `x`: `[rows, 2 n]`; returns `[rows, n]`
    fn geglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        activation::geglu::<Self>(x)
    }

    /// The GEGLU's backward: the gradient of `x` given the output's, `[rows, 2 n]`; the
    /// default is [`activation::geglu_backward`].
    fn geglu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        activation::geglu_backward::<Self>(x, grad)
    }

    /// `x W + b` (burn's `linear`: `weight` is `[in, out]`); under `Autodiff` its own operation
    /// whose gradients are the three `linear_layer_*_grad` below. The default is burn's.
    ///
    /// # Shapes
    /// - `x`: `[..., in]`, `weight`: `[in, out]`, `bias`: `[out]`; returns `[..., out]`
    fn linear_layer(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear(x, weight, bias)
    }

    /// The gradient of [`linear_layer`](Self::linear_layer)'s `x`, `grad W^T`; the default is burn's.
    fn linear_layer_x_grad(
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear_x_backward(weight, grad)
    }

    /// The gradient of [`linear_layer`](Self::linear_layer)'s weight, `x^T grad` summed over every leading
    /// axis; the default is burn's.
    fn linear_layer_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear_weight_backward(x, grad)
    }

    /// The gradient of [`linear_layer`](Self::linear_layer)'s bias, `grad` summed over every leading axis;
    /// the default is burn's.
    fn linear_layer_bias_grad(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear_bias_backward(grad)
    }

    /// A 2-D convolution with bias (burn's `conv2d`); under `Autodiff` its own operation,
    /// whose input and bias gradients are burn's and whose weight gradient is
    /// [`conv2d_weight_grad`](Self::conv2d_weight_grad).
    ///
    /// # Shapes
    /// - `x`: `[batch, c_in, h, w]`, `weight`: `[c_out, c_in / groups, kh, kw]`, `bias`:
    ///   `[c_out]`; returns `[batch, c_out, h_out, w_out]`
    fn convolve(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d(x, weight, Some(bias), options)
    }

    /// The gradient of [`convolve`](Self::convolve)'s weight given the output's gradient
    /// `grad`; the default is burn's `conv2d_weight_backward`.
    fn conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d_weight_backward(x, weight, grad, options)
    }

    /// The gradient of [`convolve`](Self::convolve)'s input given the output's gradient
    /// `grad`; the default is burn's `conv2d_x_backward`.
    fn conv2d_x_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d_x_backward(x, weight, grad, options)
    }

    /// GroupNorm with a per-channel affine: the output and the per-group mean and reciprocal
    /// standard deviation its backward reads; the default is [`norm::group_norm`].
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, spatial]`, `gamma`, `beta`: `[channels]`; returns the output
    ///   shaped like `x` and two `[batch, groups]` statistics
    fn group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        norm::group_norm::<Self>(x, gamma, beta, groups, eps)
    }

    /// Gradients `[dx, dgamma, dbeta]` of [`group_norm`](Self::group_norm) given the output's
    /// gradient `grad`; the default is [`norm::group_norm_backward`].
    fn group_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        groups: usize,
    ) -> [FloatTensor<Self>; 3] {
        norm::group_norm_backward::<Self>(x, gamma, mean, rstd, grad, groups)
    }
}

#[cfg(feature = "ndarray")]
mod ndarray_impl {
    use burn::backend::NdArray;
    use burn::backend::ndarray::{
        FloatNdArrayElement, IntNdArrayElement, NdArrayTensor, QuantElement, SharedArray,
    };
    use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};

    use super::{
        Columns, ConvPath, KernelBackend, activation, columns, host, host_conv, host_linear,
        host_norm, norm,
    };

    /// burn-ndarray's convolution backward is slow (two shapes UNet training steps: 45.8 s
    /// with it, 7.4 s with im2col on 2 cores), and it has no bf16/f16 kernels: convolutions,
    /// linear layers, attention, GroupNorm, the SiLU and the GEGLU run as host kernels (one
    /// pass over memory, rayon, `gemm` products on strided views).
    impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> KernelBackend
        for NdArray<E, I, Q>
    where
        NdArrayTensor: From<SharedArray<E>>,
        NdArrayTensor: From<SharedArray<I>>,
    {
        const CONV_PATH: ConvPath = ConvPath::Kernel;
        const HALF_PRECISION: bool = false;

        fn convolve(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            options: ConvOptions<2>,
        ) -> FloatTensor<Self> {
            host_conv::convolve(&x, &weight, &bias, &options).unwrap_or_else(|| {
                <Self as ModuleOps<Self>>::conv2d(x, weight, Some(bias), options)
            })
        }

        fn conv2d_x_grad(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            options: ConvOptions<2>,
        ) -> FloatTensor<Self> {
            host_conv::x_grad(&x, &weight, &grad, &options).unwrap_or_else(|| {
                <Self as ModuleOps<Self>>::conv2d_x_backward(x, weight, grad, options)
            })
        }

        fn conv2d_weight_grad(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            options: ConvOptions<2>,
        ) -> FloatTensor<Self> {
            host_conv::weight_grad(&x, &weight, &grad, &options).unwrap_or_else(|| {
                <Self as ModuleOps<Self>>::conv2d_weight_backward(x, weight, grad, options)
            })
        }

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

        fn linear_layer(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: Option<FloatTensor<Self>>,
        ) -> FloatTensor<Self> {
            host_linear::linear(&x, &weight, bias.as_ref())
                .unwrap_or_else(|| <Self as ModuleOps<Self>>::linear(x, weight, bias))
        }

        fn linear_layer_x_grad(
            weight: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            host_linear::x_backward(&weight, &grad)
                .unwrap_or_else(|| <Self as ModuleOps<Self>>::linear_x_backward(weight, grad))
        }

        fn linear_layer_weight_grad(
            x: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            host_linear::weight_backward(&x, &grad)
                .unwrap_or_else(|| <Self as ModuleOps<Self>>::linear_weight_backward(x, grad))
        }

        fn linear_layer_bias_grad(grad: FloatTensor<Self>) -> FloatTensor<Self> {
            host_linear::bias_backward(&grad)
                .unwrap_or_else(|| <Self as ModuleOps<Self>>::linear_bias_backward(grad))
        }

        fn geglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            host::geglu(&x).unwrap_or_else(|| activation::geglu::<Self>(x))
        }

        fn geglu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            host::geglu_backward(&x, &grad)
                .unwrap_or_else(|| activation::geglu_backward::<Self>(x, grad))
        }

        fn group_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            groups: usize,
            eps: f64,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            host_norm::group_norm(&x, &gamma, &beta, groups, eps)
                .unwrap_or_else(|| norm::group_norm::<Self>(x, gamma, beta, groups, eps))
        }

        fn group_norm_backward(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            mean: FloatTensor<Self>,
            rstd: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            groups: usize,
        ) -> [FloatTensor<Self>; 3] {
            host_norm::group_norm_backward(&x, &gamma, &mean, &rstd, &grad, groups).unwrap_or_else(
                || norm::group_norm_backward::<Self>(x, gamma, mean, rstd, grad, groups),
            )
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
    use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
    use burn_tch::{LibTorch, TchElement, TchTensor};
    use tch::Kind;

    use super::{ConvPath, KernelBackend};

    /// LibTorch's own convolution (oneDNN on the CPU, cuDNN on CUDA) with the weight gradient
    /// as a matrix product over the input's columns, half types, and PyTorch's one-kernel
    /// SiLU, SiLU backward and GroupNorm.
    impl<E: TchElement> KernelBackend for LibTorch<E> {
        const CONV_PATH: ConvPath = ConvPath::NativeOwnWeightGrad;

        /// `dW[o, i, kh, kw] = sum over images and output positions of grad[o] * columns[i, kh,
        /// kw]`: PyTorch's `im2col` of the input (the columns live only here) and one batched
        /// matrix product, summed over the batch in f32 (f64 for f64).
        fn conv2d_weight_grad(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            options: ConvOptions<2>,
        ) -> FloatTensor<Self> {
            let w_size = weight.tensor.size();
            if options.groups != 1 {
                return <Self as ModuleOps<Self>>::conv2d_weight_backward(x, weight, grad, options);
            }
            let i64s = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
            let columns = x.tensor.im2col(
                [w_size[2], w_size[3]],
                i64s(options.dilation),
                i64s(options.padding),
                i64s(options.stride),
            );
            let g = grad.tensor.flatten(2, 3).to_kind(columns.kind());
            // The batch sum in f32 at least.
            let wide = match columns.kind() {
                Kind::Double => Kind::Double,
                _ => Kind::Float,
            };
            let dw = g
                .matmul(&columns.transpose(1, 2))
                .sum_dim_intlist([0i64].as_slice(), false, wide)
                .reshape(w_size.as_slice())
                .to_kind(weight.tensor.kind());
            TchTensor::new(dw)
        }

        fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            TchTensor::new(x.tensor.silu())
        }

        fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            TchTensor::new(x.tensor.silu_backward(&grad.tensor))
        }

        /// PyTorch's `native_group_norm` (one kernel; tch exposes no `native_group_norm_backward`,
        /// so the backward is the portable one).
        fn group_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            groups: usize,
            eps: f64,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            let size = x.tensor.size();
            let kind = x.tensor.kind();
            let affine = |p: &TchTensor| p.tensor.to_kind(kind);
            let (y, mean, rstd) = x.tensor.contiguous().native_group_norm(
                Some(affine(&gamma)),
                Some(affine(&beta)),
                size[0],
                size[1],
                size[2],
                groups as i64,
                eps,
            );
            (
                TchTensor::new(y),
                TchTensor::new(mean),
                TchTensor::new(rstd),
            )
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use burn::tensor::{Distribution, Tensor, TensorPrimitive};

        type T = LibTorch<f64>;

        /// PyTorch's columns times the gradient against burn's default weight gradient (f64,
        /// CPU) for 3x3 padded, strided and dilated kernels and a 1x1 kernel.
        #[test]
        fn columns_weight_gradient_matches_burns() {
            let device = Default::default();
            let normal = Distribution::Normal(0.0, 1.0);
            let p = |t: Tensor<T, 4>| t.into_primitive().tensor();
            let cases = [
                (5, 7, 3, 1, 1, 1, 9, 8),
                (4, 6, 3, 2, 1, 1, 9, 10),
                (6, 3, 1, 1, 0, 1, 7, 5),
                (4, 5, 3, 1, 2, 2, 9, 7),
            ];
            for (c_in, c_out, k, stride, pad, dilation, h, w) in cases {
                let options = ConvOptions::new([stride; 2], [pad; 2], [dilation; 2], 1);
                let x = Tensor::<T, 4>::random([2, c_in, h, w], normal, &device);
                let weight = Tensor::<T, 4>::random([c_out, c_in, k, k], normal, &device);
                let y =
                    burn::tensor::module::conv2d(x.clone(), weight.clone(), None, options.clone());
                let grad = y.random_like(normal);
                let dw = |f: fn(_, _, _, _) -> _| {
                    let t = f(
                        p(x.clone()),
                        p(weight.clone()),
                        p(grad.clone()),
                        options.clone(),
                    );
                    Tensor::<T, 4>::from_primitive(TensorPrimitive::Float(t))
                };
                let ours = dw(<T as KernelBackend>::conv2d_weight_grad);
                let theirs = dw(<T as ModuleOps<T>>::conv2d_weight_backward);
                let scale = theirs.clone().abs().max().into_scalar();
                let err = (ours - theirs).abs().max().into_scalar() / scale;
                assert!(
                    err < 1e-12,
                    "k {k} stride {stride} dilation {dilation}: {err:e}"
                );
            }
        }
    }
}
