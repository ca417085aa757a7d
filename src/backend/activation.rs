//! The portable SiLU kernels of [`KernelBackend`](super::KernelBackend), in burn tensor
//! operations on the primitive (any rank), with `sigmoid(x) = (1 + tanh(x / 2)) / 2`: bounded,
//! no overflow, and in the tensor's own precision (burn 0.21's `sigmoid` computes in f32).

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

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
