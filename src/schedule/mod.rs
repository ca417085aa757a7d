//! Noise schedules. Training: SD 2.1's DDPM (epsilon or v targets, optional min-SNR weighting)
//! and SD 3's rectified flow (logit-normal sigmas with the timestep shift). Inference: DDIM
//! (SD 2.1) and flow-matching Euler (SD 3) behind one [`Sampler`] trait, plus classifier-free
//! guidance. [`Schedule`] is the training side seen by a step: levels in, noised inputs,
//! targets and weights out.
//!
//! Ports the training-time parts of diffusers' `DDPMScheduler` (`add_noise`, `get_velocity`)
//! and `FlowMatchEulerDiscreteScheduler` (`scale_noise`, the `shift` of its sigmas), and the
//! sampling parts of `DDIMScheduler` and `FlowMatchEulerDiscreteScheduler`.

mod betas;
mod ddim;
mod ddpm;
mod flow;
mod flow_euler;
mod sampler;
mod spacing;
mod training;

pub use betas::BetaSchedule;
pub use ddim::{DDIM_COMPATIBLE, DdimConfig, DdimScheduler, DdimStepOutput};
pub use ddpm::{DdpmConfig, DdpmSchedule, PredictionType};
pub use flow::{FlowConfig, FlowSchedule};
pub use flow_euler::{FlowEulerConfig, FlowEulerScheduler};
pub use sampler::{Sampler, cfg, rescale_noise_cfg};
pub use spacing::TimestepSpacing;
pub use training::Schedule;

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Per-sample scalars as a `[batch, 1, 1, 1]` tensor that broadcasts over a latent batch.
pub(crate) fn per_sample<B: Backend>(values: &[f64], device: &B::Device) -> Tensor<B, 4> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, [values.len(), 1, 1, 1]), device)
}
