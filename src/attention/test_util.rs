//! Helpers of the attention tests of every backend: values out of a tensor, and the error
//! measure they compare with.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The tensor's values as f64.
pub(crate) fn values<B: Backend>(t: Tensor<B, 4>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().unwrap()
}

/// `max|a - b| / max|b|` over equally long slices.
pub(crate) fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    diff / b.iter().map(|x| x.abs()).fold(f64::MIN_POSITIVE, f64::max)
}
