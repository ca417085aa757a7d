//! [`linear`]: burn's `Linear` layer run through the backend's own kernel.

use burn::nn::Linear;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::backend::KernelBackend;

/// `layer.forward(x)` computed by [`KernelBackend::linear_layer`] (the same function; on
/// burn-ndarray one matrix product each way over `x` as it lies, instead of broadcast copies of
/// both operands and of the output). Rank-1 inputs take burn's own forward.
///
/// # Shapes
/// - `x`: `[..., in]`; returns `[..., out]`
pub fn linear<B: KernelBackend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    if D < 2 {
        return layer.forward(x);
    }
    let float = |t: Tensor<B, 1>| t.into_primitive().tensor();
    let y = B::linear_layer(
        x.into_primitive().tensor(),
        layer.weight.val().into_primitive().tensor(),
        layer.bias.as_ref().map(|b| float(b.val())),
    );
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::backend::Autodiff;
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, Tolerance};

    type A = Autodiff<TestBackend>;

    /// Output and the gradients of the input, weight and bias against burn's `Linear::forward`
    /// under autodiff (f64), with and without a bias, on a row-major and a transposed input.
    #[test]
    fn matches_burns_linear_and_its_gradients() {
        let device = Default::default();
        let tol = Tolerance::absolute(1e-12).set_relative(1e-12);
        for bias in [true, false] {
            let layer = LinearConfig::new(6, 3).with_bias(bias).init::<A>(&device);
            for transposed in [false, true] {
                let x = if transposed {
                    Tensor::<A, 3>::random([2, 6, 4], Distribution::Normal(0.0, 1.0), &device)
                        .swap_dims(1, 2)
                } else {
                    Tensor::<A, 3>::random([2, 4, 6], Distribution::Normal(0.0, 1.0), &device)
                };
                let x = x.detach().require_grad();
                let weights =
                    Tensor::<A, 3>::random([2, 4, 3], Distribution::Normal(0.0, 1.0), &device);
                let run = |f: &dyn Fn(Tensor<A, 3>) -> Tensor<A, 3>| {
                    let y = f(x.clone());
                    let grads = (y.clone() * weights.clone()).sum().backward();
                    let g = |t: Option<Tensor<TestBackend, 2>>| t.map(|t| t.into_data());
                    (
                        y.into_data(),
                        x.grad(&grads).map(|t| t.into_data()),
                        g(layer.weight.grad(&grads)),
                        layer
                            .bias
                            .as_ref()
                            .and_then(|b| b.grad(&grads))
                            .map(|t| t.into_data()),
                    )
                };
                let ours = run(&|x| linear(&layer, x));
                let theirs = run(&|x| layer.forward(x));
                ours.0.assert_approx_eq::<f64>(&theirs.0, tol);
                for (a, b) in [(ours.1, theirs.1), (ours.2, theirs.2), (ours.3, theirs.3)] {
                    assert_eq!(a.is_some(), b.is_some(), "bias {bias}");
                    if let (Some(a), Some(b)) = (a, b) {
                        a.assert_approx_eq::<f64>(&b, tol);
                    }
                }
            }
        }
    }
}
