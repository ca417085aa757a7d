//! SD 3's adaptive layer norms (diffusers `normalization.py`): the conditioning vector sets
//! the scale, shift and gates of parameter-free layer norms.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

use crate::nn::{layer_norm, silu};

/// Epsilon of every SD 3 layer norm.
pub const NORM_EPS: f64 = 1e-6;

/// `x * (1 + scale) + shift` with per-sample `[batch, dim]` modulation over `[batch, n, dim]`.
pub fn modulate<B: Backend>(
    x: Tensor<B, 3>,
    shift: &Tensor<B, 2>,
    scale: &Tensor<B, 2>,
) -> Tensor<B, 3> {
    x * scale.clone().add_scalar(1.0).unsqueeze_dim(1) + shift.clone().unsqueeze_dim(1)
}

/// `x * gate` with a per-sample `[batch, dim]` gate.
pub fn gated<B: Backend>(x: Tensor<B, 3>, gate: &Tensor<B, 2>) -> Tensor<B, 3> {
    x * gate.clone().unsqueeze_dim(1)
}

/// adaLN-Zero: `linear(silu(emb))` split into `chunks` modulation vectors.
///
/// diffusers' `AdaLayerNormZero` has six (shift, scale, gate for attention; shift, scale, gate
/// for the MLP); `SD35AdaLayerNormZeroX` nine (plus shift, scale, gate of the dual attention).
#[derive(Module, Debug)]
pub struct AdaLayerNormZero<B: Backend> {
    /// Conditioning to `chunks * dim` modulation values.
    pub linear: Linear<B>,
    /// Number of modulation vectors (6 or 9).
    pub chunks: usize,
}

/// The modulation of one stream of a joint block.
#[derive(Debug, Clone)]
pub struct Modulation<B: Backend> {
    /// The normalised input modulated for the joint attention.
    pub attn_input: Tensor<B, 3>,
    /// Gate of the attention output.
    pub gate_msa: Tensor<B, 2>,
    /// Shift of the MLP input.
    pub shift_mlp: Tensor<B, 2>,
    /// Scale of the MLP input.
    pub scale_mlp: Tensor<B, 2>,
    /// Gate of the MLP output.
    pub gate_mlp: Tensor<B, 2>,
    /// Input and gate of the dual (image-only) attention, for 9-way norms.
    pub dual: Option<(Tensor<B, 3>, Tensor<B, 2>)>,
}

impl<B: Backend> AdaLayerNormZero<B> {
    /// Builds the layer: 6 chunks, or 9 with a dual attention.
    pub fn new(dim: usize, dual: bool, device: &B::Device) -> Self {
        let chunks = if dual { 9 } else { 6 };
        Self {
            linear: LinearConfig::new(dim, chunks * dim).init(device),
            chunks,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, n, dim]`, `emb`: `[batch, dim]`
    pub fn forward(&self, x: Tensor<B, 3>, emb: Tensor<B, 2>) -> Modulation<B> {
        let parts = self.linear.forward(silu(emb)).chunk(self.chunks, 1);
        let normed = layer_norm(x, NORM_EPS);
        let attn_input = modulate(normed.clone(), &parts[0], &parts[1]);
        let dual =
            (self.chunks == 9).then(|| (modulate(normed, &parts[6], &parts[7]), parts[8].clone()));
        Modulation {
            attn_input,
            gate_msa: parts[2].clone(),
            shift_mlp: parts[3].clone(),
            scale_mlp: parts[4].clone(),
            gate_mlp: parts[5].clone(),
            dual,
        }
    }
}

/// `layer_norm(x) * (1 + scale) + shift` with `(scale, shift) = linear(silu(cond))` (note the
/// order: scale first), diffusers' `AdaLayerNormContinuous` without affine parameters.
#[derive(Module, Debug)]
pub struct AdaLayerNormContinuous<B: Backend> {
    /// Conditioning to `2 * dim` values.
    pub linear: Linear<B>,
}

impl<B: Backend> AdaLayerNormContinuous<B> {
    /// Builds the layer.
    pub fn new(dim: usize, cond_dim: usize, device: &B::Device) -> Self {
        Self {
            linear: LinearConfig::new(cond_dim, 2 * dim).init(device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, n, dim]`, `cond`: `[batch, cond_dim]`, returns `[batch, n, dim]`
    pub fn forward(&self, x: Tensor<B, 3>, cond: Tensor<B, 2>) -> Tensor<B, 3> {
        let parts = self.linear.forward(silu(cond)).chunk(2, 1);
        modulate(layer_norm(x, NORM_EPS), &parts[1], &parts[0])
    }
}
