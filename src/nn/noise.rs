//! Gaussian noise drawn on the host, so a seed gives the same tensor on every backend.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::Rng;
use rand_distr::StandardNormal;

/// A standard-normal f32 tensor of `shape`, drawn from `rng` in row-major order (backends'
/// own RNGs differ; this does not).
pub fn normal_tensor<B: Backend, const D: usize>(
    rng: &mut impl Rng,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}
