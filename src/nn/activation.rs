//! SiLU and exact GELU with gradients that are right in every float precision.
//!
//! burn 0.21's own versions fall short for training and for gradient checks: its `gelu`
//! backward is the derivative of the *tanh approximation* although the forward is the exact
//! (erf) GELU, and its `sigmoid` (hence `silu`) is computed in f32 whatever the tensor's dtype.
//! These are compositions of elementwise ops whose autodiff is exact; fusing backends merge them.

use burn::tensor::{Tensor, TensorPrimitive, backend::Backend};

use crate::backend::KernelBackend;

/// `x * sigmoid(x)` through the backend's kernel ([`KernelBackend::silu`]): one pass forward
/// and one backward on burn-ndarray, [`silu`]'s composition elsewhere. The UNet's hot
/// GroupNorm-SiLU-convolution chains use it.
pub fn silu_kernel<B: KernelBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::silu(x.into_primitive().tensor())))
}

/// diffusers' GEGLU after its projection: `hidden * gelu(gate)` (exact GELU) for `x = [hidden,
/// gate]` split along the last axis, as one backend operation ([`KernelBackend::geglu`]) with its
/// own backward: one pass each way on burn-ndarray instead of a chunk copy and about fifteen
/// element-wise operations.
///
/// # Shapes
/// - `x`: `[..., 2 n]`; returns `[..., n]`
pub fn geglu<B: KernelBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let mut shape = x.dims();
    let width = shape[D - 1];
    let rows = shape[..D - 1].iter().product::<usize>();
    shape[D - 1] = width / 2;
    let y = B::geglu(x.reshape([rows, width]).into_primitive().tensor());
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y)).reshape(shape)
}

/// `x * sigmoid(x)`, with `sigmoid(x) = (1 + tanh(x / 2)) / 2` (bounded, no overflow).
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let gate = x
        .clone()
        .mul_scalar(0.5)
        .tanh()
        .mul_scalar(0.5)
        .add_scalar(0.5);
    x * gate
}

/// Exact GELU: `x * (1 + erf(x / sqrt(2))) / 2` (PyTorch's default `gelu`).
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let cdf = x
        .clone()
        .mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    x * cdf
}

/// GELU with the tanh approximation (PyTorch `gelu(approximate="tanh")`, SD 3's feed-forward).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
    x.mul_scalar(0.5) * (inner.tanh() + 1.0)
}

/// `x * sigmoid(1.702 x)` (transformers' `quick_gelu`, OpenAI CLIP's activation), with the
/// bounded `sigmoid(z) = (1 + tanh(z / 2)) / 2` of [`silu`].
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let gate = x
        .clone()
        .mul_scalar(0.851)
        .tanh()
        .mul_scalar(0.5)
        .add_scalar(0.5);
    x * gate
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::backend::Autodiff;
    use burn::tensor::TensorData;

    type A = Autodiff<TestBackend>;

    /// Values against closed forms and gradients against central differences, in f64, for
    /// the compositions and the SiLU kernel.
    #[test]
    fn values_and_gradients() {
        let device = Default::default();
        let xs = [-30.0, -3.0, -0.7, 0.0, 0.4, 2.5, 30.0];
        let silu_ref = |x: f64| x / (1.0 + (-x).exp());
        let gelu_ref = |x: f64| 0.5 * x * (1.0 + reference_erf(x / 2f64.sqrt()));
        for (f, r) in [
            (
                silu::<A, 1> as fn(Tensor<A, 1>) -> Tensor<A, 1>,
                &silu_ref as &dyn Fn(f64) -> f64,
            ),
            // The backend kernel (burn-ndarray's one-pass loop, its own backward).
            (silu_kernel::<A, 1>, &silu_ref),
            (gelu::<A, 1>, &gelu_ref),
        ] {
            let x = Tensor::<A, 1>::from_data(TensorData::new(xs.to_vec(), [xs.len()]), &device)
                .require_grad();
            let y = f(x.clone());
            let got = y.clone().into_data().to_vec::<f64>().unwrap();
            let grad = x
                .grad(&y.sum().backward())
                .unwrap()
                .into_data()
                .to_vec::<f64>()
                .unwrap();
            for (i, &v) in xs.iter().enumerate() {
                assert!((got[i] - r(v)).abs() < 1e-12, "value at {v}");
                let fd = (r(v + 1e-6) - r(v - 1e-6)) / 2e-6;
                assert!(
                    (grad[i] - fd).abs() < 1e-8,
                    "gradient at {v}: {} vs {fd}",
                    grad[i]
                );
            }
        }
    }

    /// GEGLU through the backend kernel (burn-ndarray's loops with their own backward) and the
    /// portable composition (burn's autodiff of it): values against the closed form
    /// `a * gelu(g)`, gradients of both halves against central differences.
    #[test]
    fn geglu_values_and_gradients() {
        let device = Default::default();
        let gates = [-30.0, -3.0, -0.7, 0.0, 0.4, 2.5, 30.0];
        let hidden = [1.5, -0.3, 2.0, 0.7, -1.1, 0.25, -2.0];
        let n = gates.len();
        let gelu_ref = |x: f64| 0.5 * x * (1.0 + reference_erf(x / 2f64.sqrt()));
        // Two rows: [hidden, gate] and [-hidden, -gate].
        let row: Vec<f64> = hidden.iter().chain(&gates).copied().collect();
        let rows: Vec<f64> = row
            .iter()
            .chain(&row)
            .enumerate()
            .map(|(i, &v)| if i < 2 * n { v } else { -v })
            .collect();
        let portable = |x: Tensor<A, 2>| {
            let y = crate::backend::activation::geglu::<A>(x.into_primitive().tensor());
            Tensor::<A, 2>::from_primitive(TensorPrimitive::Float(y))
        };
        for (name, f) in [
            (
                "kernel",
                &geglu::<A, 2> as &dyn Fn(Tensor<A, 2>) -> Tensor<A, 2>,
            ),
            ("portable", &portable),
        ] {
            let x = Tensor::<A, 2>::from_data(TensorData::new(rows.clone(), [2, 2 * n]), &device)
                .require_grad();
            let y = f(x.clone());
            assert_eq!(y.dims(), [2, n]);
            let got = y.clone().into_data().to_vec::<f64>().unwrap();
            let grad = x
                .grad(&y.sum().backward())
                .unwrap()
                .into_data()
                .to_vec::<f64>()
                .unwrap();
            for r in 0..2 {
                let at = |i: usize| rows[r * 2 * n + i];
                for i in 0..n {
                    let (a, g) = (at(i), at(n + i));
                    let want = a * gelu_ref(g);
                    assert!(
                        (got[r * n + i] - want).abs() < 1e-12,
                        "{name}: value at {a}, {g}"
                    );
                    let fd_g = a * (gelu_ref(g + 1e-6) - gelu_ref(g - 1e-6)) / 2e-6;
                    let (d_a, d_g) = (grad[r * 2 * n + i], grad[r * 2 * n + n + i]);
                    assert!(
                        (d_a - gelu_ref(g)).abs() < 1e-8,
                        "{name}: d hidden at {a}, {g}"
                    );
                    assert!(
                        (d_g - fd_g).abs() < 1e-8,
                        "{name}: d gate at {a}, {g}: {d_g} vs {fd_g}"
                    );
                }
            }
        }
    }

    /// erf from its Maclaurin series (exact to ~1e-12 for |x| <= 5, where it is used), and
    /// +-1 beyond (|1 - erf(5)| < 2e-12).
    fn reference_erf(x: f64) -> f64 {
        if x.abs() > 5.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-18 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
