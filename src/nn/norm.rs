//! Parameter-free layer normalisation (PyTorch `LayerNorm(elementwise_affine=False)`).
//!
//! burn's `LayerNorm` always owns `gamma`/`beta`; SD 3's adaptive norms have none (their scale
//! and shift come from the conditioning), so the checkpoint has no keys for them.

use crate::precision::in_accumulation;
use burn::tensor::{Tensor, backend::Backend};

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
}
