//! What a sampling loop needs from a scheduler ([`Sampler`]) and classifier-free guidance
//! ([`cfg`], [`rescale_noise_cfg`] from diffusers' `pipeline_stable_diffusion.py`).

use burn::tensor::{Tensor, backend::Backend};

/// An inference scheduler seen by a sampling loop, indexed by step rather than by timestep.
///
/// Both [`super::DdimScheduler`] and [`super::FlowEulerScheduler`] implement it; neither
/// scales the model input (diffusers' `scale_model_input` is the identity for both). A loop:
///
/// ```ignore
/// sampler.set_timesteps(steps)?;
/// let mut x = noise.mul_scalar(sampler.init_noise_sigma());
/// for (i, t) in sampler.model_timesteps().into_iter().enumerate() {
///     let out = model(x.clone(), t); // with classifier-free guidance: `cfg(..)`
///     x = sampler.step(out, i, x)?;
/// }
/// ```
pub trait Sampler {
    /// Chooses `n` inference steps.
    fn set_timesteps(&mut self, n: usize) -> crate::Result<()>;

    /// The timestep value the model is fed at each step (DDIM: integer timesteps; flow:
    /// `T * sigma`), largest first; empty before [`Self::set_timesteps`].
    fn model_timesteps(&self) -> Vec<f64>;

    /// The scale of the initial Gaussian noise (1 for DDIM; flow starts from the noise as is).
    fn init_noise_sigma(&self) -> f64;

    /// Step `i`: the next, less noisy sample from the model's output at step `i`.
    ///
    /// # Shapes
    /// - `model_output`, `sample`: `[batch, c, h, w]`.
    fn step<B: Backend>(
        &self,
        model_output: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
    ) -> crate::Result<Tensor<B, 4>>;
}

/// Classifier-free guidance: `uncond + scale * (cond - uncond)`.
///
/// # Shapes
/// - `uncond`, `cond`: the same shape, `[batch, c, h, w]`.
pub fn cfg<B: Backend>(uncond: Tensor<B, 4>, cond: Tensor<B, 4>, scale: f64) -> Tensor<B, 4> {
    uncond.clone() + (cond - uncond).mul_scalar(scale)
}

/// diffusers' `rescale_noise_cfg` (Lin et al. 2023, section 3.4): scales the guided output to
/// the per-sample standard deviation of the conditional one, then mixes
/// `guidance_rescale * rescaled + (1 - guidance_rescale) * guided`. Standard deviations are
/// unbiased (PyTorch's `std`) over all but the batch dimension.
///
/// # Shapes
/// - `guided`, `cond`: `[batch, c, h, w]`.
pub fn rescale_noise_cfg<B: Backend>(
    guided: Tensor<B, 4>,
    cond: Tensor<B, 4>,
    guidance_rescale: f64,
) -> Tensor<B, 4> {
    let std = |x: Tensor<B, 4>| {
        let [b, c, h, w] = x.dims();
        x.reshape([b, c * h * w])
            .var(1)
            .sqrt()
            .reshape([b, 1, 1, 1])
    };
    let rescaled = guided.clone() * (std(cond) / std(guided.clone()));
    rescaled.mul_scalar(guidance_rescale) + guided.mul_scalar(1.0 - guidance_rescale)
}
