//! diffusers' `FeedForward` with a GEGLU (SD 1/2) or tanh-GELU (SD 3) input projection.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::activation::{geglu, gelu_tanh};
use super::linear::linear;
use crate::backend::KernelBackend;

/// The activation of a [`FeedForward`] (diffusers' `activation_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedForwardActivation {
    /// `"geglu"`: `proj` doubles the width; `hidden * gelu(gate)` with exact (erf) GELU.
    #[serde(rename = "geglu")]
    Geglu,
    /// `"gelu-approximate"`: `gelu(proj(x))` with the tanh approximation.
    #[serde(rename = "gelu-approximate")]
    GeluTanh,
}

/// Configuration of [`FeedForward`].
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Input and output width (`dim`).
    pub dim: usize,
    /// Hidden width (`dim * mult`, 4x by default in diffusers).
    pub inner_dim: usize,
    /// Activation.
    pub activation: FeedForwardActivation,
}

/// `net.0` (activation with its projection) then `net.2` (output projection).
///
/// The weight loader maps diffusers' `net.0.proj` to [`proj_in`](Self::proj_in) and `net.2` to
/// [`proj_out`](Self::proj_out) (`net.1` is a parameter-free dropout).
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// diffusers `net.0.proj`.
    pub proj_in: Linear<B>,
    /// diffusers `net.2`.
    pub proj_out: Linear<B>,
    /// Activation between the two projections.
    pub activation: FeedForwardActivation,
}

impl FeedForwardConfig {
    /// Builds the layer.
    pub fn init<B: Backend>(&self, device: &B::Device) -> FeedForward<B> {
        let proj_width = match self.activation {
            FeedForwardActivation::Geglu => 2 * self.inner_dim,
            FeedForwardActivation::GeluTanh => self.inner_dim,
        };
        FeedForward {
            proj_in: LinearConfig::new(self.dim, proj_width).init(device),
            proj_out: LinearConfig::new(self.inner_dim, self.dim).init(device),
            activation: self.activation,
        }
    }
}

impl<B: KernelBackend> FeedForward<B> {
    /// # Shapes
    /// - `x`: `[batch, tokens, dim]`, returns the same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = linear(&self.proj_in, x);
        let h = match self.activation {
            FeedForwardActivation::Geglu => geglu(h),
            FeedForwardActivation::GeluTanh => gelu_tanh(h),
        };
        linear(&self.proj_out, h)
    }
}
