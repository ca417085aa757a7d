//! Normalisations burn's modules do not cover as needed: parameter-free layer normalisation
//! (PyTorch `LayerNorm(elementwise_affine=False)`) and GroupNorm through the backend's own
//! kernels.
//!
//! burn's `LayerNorm` always owns `gamma`/`beta`; SD 3's adaptive norms have none (their scale
//! and shift come from the conditioning), so the checkpoint has no keys for them. burn's
//! `GroupNorm` module keeps the weights (and their diffusers keys); [`group_norm`] runs it
//! through [`KernelBackend::group_norm`], one operation with its own backward.

use crate::backend::KernelBackend;
use crate::precision::in_accumulation;
use burn::nn::GroupNorm;
use burn::tensor::{Tensor, TensorPrimitive, backend::Backend};

/// `norm.forward(x)` computed by [`KernelBackend::group_norm`] (the same function; one
/// operation forward and one backward instead of burn's composition). A norm without affine
/// parameters runs burn's own forward.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` (rank 3 or more); returns the same shape
pub fn group_norm<B: KernelBackend, const D: usize>(
    norm: &GroupNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return norm.forward(x);
    };
    let shape = x.shape();
    let (n, c) = (shape[0], shape[1]);
    let spatial = shape.num_elements() / (n * c).max(1);
    let float = |t: Tensor<B, 1>| t.into_primitive().tensor();
    let (y, _, _) = B::group_norm(
        x.reshape([n, c, spatial]).into_primitive().tensor(),
        float(gamma.val()),
        float(beta.val()),
        norm.num_groups,
        norm.epsilon,
    );
    Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(y)).reshape(shape)
}

/// Normalises over the last axis: `(x - mean) / sqrt(var + eps)` with the biased variance, as
/// PyTorch does. Statistics are computed wide for narrow inputs
/// ([`in_accumulation`]), the result is in `x`'s type.
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    in_accumulation(x, |x| {
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        (x - mean) / var.add_scalar(eps).sqrt()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    /// Against the closed form on a hand-made row.
    #[test]
    fn normalises_rows() {
        let device = Default::default();
        let x = Tensor::<TestBackend, 2>::from_floats([[1.0, 2.0, 3.0, 6.0], [0.0; 4]], &device);
        let got = layer_norm(x, 1e-6).into_data().to_vec::<f64>().unwrap();
        let (mean, var) = (3.0, (4.0 + 1.0 + 0.0 + 9.0) / 4.0);
        for (i, v) in [1.0, 2.0, 3.0, 6.0].iter().enumerate() {
            let want = (v - mean) / (var + 1e-6f64).sqrt();
            assert!((got[i] - want).abs() < 1e-12, "{i}: {} vs {want}", got[i]);
        }
        assert!(got[4..].iter().all(|v| v.abs() < 1e-12));
    }

    /// A GroupNorm of 6 channels in 3 groups with random affine parameters, and an input
    /// `[2, 6, 3, 5]` off zero mean and unit variance.
    fn norm_and_input<B: Backend>(device: &B::Device) -> (GroupNorm<B>, Tensor<B, 4>) {
        use burn::module::Param;
        use burn::nn::GroupNormConfig;
        use burn::tensor::Distribution::Normal;
        let mut norm = GroupNormConfig::new(3, 6).init::<B>(device);
        norm.gamma = Some(Param::from_tensor(Tensor::random(
            [6],
            Normal(1.0, 0.5),
            device,
        )));
        norm.beta = Some(Param::from_tensor(Tensor::random(
            [6],
            Normal(0.0, 0.5),
            device,
        )));
        (norm, Tensor::random([2, 6, 3, 5], Normal(0.5, 2.0), device))
    }

    fn max_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
        (a - b).abs().max().into_scalar().elem::<f64>()
    }

    use burn::tensor::ElementConversion;

    /// The backend's kernel (burn-ndarray's host loops, f64 and f32) against burn's own
    /// `GroupNorm::forward`.
    #[test]
    fn group_norm_matches_burns_module() {
        let device = Default::default();
        let (norm, x) = norm_and_input::<TestBackend>(&device);
        let err = max_diff(group_norm(&norm, x.clone()), norm.forward(x));
        assert!(err < 1e-12, "f64: {err}");
        let (norm, x) = norm_and_input::<burn::backend::NdArray<f32>>(&device);
        let err = max_diff(group_norm(&norm, x.clone()), norm.forward(x));
        assert!(err < 1e-5, "f32: {err}");
    }

    /// Gradients of `sum(w * group_norm(x))` through the operation's own backward: for `x`
    /// against central finite differences, for `gamma` and `beta` against burn's autodiff of
    /// its composed `GroupNorm` (burn's `x` gradient is off by about 2e-8 in f64: it agrees with
    /// the finite differences only to that, ours to their own precision).
    #[test]
    fn group_norm_gradients_match_finite_differences_and_burns_autodiff() {
        type Ad = burn::backend::Autodiff<TestBackend>;
        let device = Default::default();
        let (norm, x) = norm_and_input::<Ad>(&device);
        let w = Tensor::<Ad, 4>::random(x.dims(), burn::tensor::Distribution::Default, &device);
        let x = x.require_grad();
        let grads_of = |y: Tensor<Ad, 4>| (y * w.clone()).sum().backward();
        let ours = grads_of(group_norm(&norm, x.clone()));
        let theirs = grads_of(norm.forward(x.clone()));
        let param = |p: &Option<burn::module::Param<Tensor<Ad, 1>>>, g| {
            p.as_ref().unwrap().val().grad(g).unwrap()
        };
        let dgamma = max_diff(param(&norm.gamma, &ours), param(&norm.gamma, &theirs));
        let dbeta = max_diff(param(&norm.beta, &ours), param(&norm.beta, &theirs));
        assert!(dgamma < 1e-12 && dbeta < 1e-12, "{dgamma} {dbeta}");
        let dx = max_diff(x.grad(&ours).unwrap(), x.grad(&theirs).unwrap());
        assert!(dx < 1e-6, "{dx}");

        let loss = |x: Vec<f64>| {
            let x = Tensor::from_data(burn::tensor::TensorData::new(x, [2, 6, 3, 5]), &device);
            let y = group_norm(&burn::module::AutodiffModule::valid(&norm), x);
            (y * w.clone().inner()).sum().into_scalar()
        };
        let x0 = x.clone().inner().into_data().to_vec::<f64>().unwrap();
        let ours_dx = x.grad(&ours).unwrap().into_data().to_vec::<f64>().unwrap();
        let h = 1e-5;
        let mut worst = 0.0f64;
        for i in 0..x0.len() {
            let bumped = |d: f64| {
                let mut v = x0.clone();
                v[i] += d;
                loss(v)
            };
            let fd = (bumped(h) - bumped(-h)) / (2.0 * h);
            worst = worst.max((ours_dx[i] - fd).abs());
        }
        assert!(worst < 1e-8, "against finite differences: {worst}");
        let largest = ours_dx.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(largest > 1e-2, "a vanishing gradient: {largest}");
    }
}
