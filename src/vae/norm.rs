//! The VAE's group norm (epsilon 1e-6 everywhere, unlike the UNet's) and 3x3 convolution.

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::backend::Backend;

/// The epsilon of every group norm in diffusers' VAE encoder and decoder.
pub(crate) const VAE_EPS: f64 = 1e-6;

/// A group norm with the VAE's epsilon.
pub(crate) fn group_norm<B: Backend>(groups: usize, c: usize, device: &B::Device) -> GroupNorm<B> {
    GroupNormConfig::new(groups, c)
        .with_epsilon(VAE_EPS)
        .init(device)
}

/// A 3x3 convolution with padding 1.
pub(crate) fn conv3x3<B: Backend>(cin: usize, cout: usize, device: &B::Device) -> Conv2d<B> {
    crate::nn::conv3x3(cin, cout, 1, 1, device)
}
