//! The portable activation kernels of [`KernelBackend`](super::KernelBackend), in burn tensor
//! operations on the primitive: the SiLU (any rank), with `sigmoid(x) = (1 + tanh(x / 2)) / 2`:
//! bounded, no overflow, and in the tensor's own precision (burn 0.21's `sigmoid` computes in
//! f32); diffusers' GEGLU with the exact (erf) GELU.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

/// `sigmoid(x)` as `(1 + tanh(x / 2)) / 2`.
fn sigmoid<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let half = B::float_mul_scalar(x, 0.5f64.into());
    let t = B::float_tanh(half);
    B::float_add_scalar(B::float_mul_scalar(t, 0.5f64.into()), 0.5f64.into())
}

/// `x * sigmoid(x)`.
pub fn silu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let s = sigmoid::<B>(x.clone());
    B::float_mul(x, s)
}

/// `grad * s (1 + x (1 - s))` with `s = sigmoid(x)`: the SiLU's backward.
pub fn silu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let s = sigmoid::<B>(x.clone());
    let one_minus = B::float_add_scalar(B::float_neg(s.clone()), 1.0f64.into());
    let inner = B::float_add_scalar(B::float_mul(x, one_minus), 1.0f64.into());
    B::float_mul(grad, B::float_mul(s, inner))
}

/// The halves `[hidden, gate]` of a `[rows, 2 n]` GEGLU input.
fn halves<B: Backend>(x: FloatTensor<B>) -> [Tensor<B, 2>; 2] {
    let x = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(x));
    let n = x.dims()[1] / 2;
    [x.clone().narrow(1, 0, n), x.narrow(1, n, n)]
}

/// `Phi(x) = (1 + erf(x / sqrt 2)) / 2`, the standard normal CDF.
fn normal_cdf<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    x.mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5)
}

/// diffusers' GEGLU after its projection: `hidden * gelu(gate)` with the exact GELU
/// `gelu(x) = x Phi(x)`, for `x = [hidden, gate]` split along the last axis.
///
/// # Shapes
/// - `x`: `[rows, 2 n]`; returns `[rows, n]`
pub fn geglu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let [hidden, gate] = halves::<B>(x);
    let gelu = gate.clone() * normal_cdf(gate);
    (hidden * gelu).into_primitive().tensor()
}

/// [`geglu`]'s backward: `[grad * gelu(gate), grad * hidden * (Phi(gate) + gate phi(gate))]`,
/// `phi` the standard normal density.
///
/// # Shapes
/// - `x`: `[rows, 2 n]`, `grad`: `[rows, n]`; returns `[rows, 2 n]`
pub fn geglu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let [hidden, gate] = halves::<B>(x);
    let grad = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grad));
    let cdf = normal_cdf(gate.clone());
    let density = gate
        .clone()
        .powi_scalar(2)
        .mul_scalar(-0.5)
        .exp()
        .mul_scalar(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    let d_hidden = grad.clone() * gate.clone() * cdf.clone();
    let d_gate = grad * hidden * (cdf + gate * density);
    Tensor::cat(vec![d_hidden, d_gate], 1)
        .into_primitive()
        .tensor()
}
