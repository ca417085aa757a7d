//! The sampling loop both pipelines share: classifier-free guidance around any [`Denoiser`],
//! stepped by any [`Sampler`].

use burn::config::Config;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::attention::NoHook;
use crate::ctcal::{Denoiser, TextCond};
use crate::error::Error;
use crate::schedule::{Sampler, cfg};

/// What to generate: the knobs of diffusers' pipeline `__call__` this crate supports.
#[derive(Config, Debug)]
pub struct GenerateConfig {
    /// Denoising steps (`num_inference_steps`).
    #[config(default = 25)]
    pub steps: usize,
    /// Classifier-free guidance scale (`guidance_scale`); at most 1 turns guidance off.
    #[config(default = 7.5)]
    pub guidance_scale: f64,
    /// Seed of the initial latent noise (drawn on the host, so every backend starts from the
    /// same latents).
    #[config(default = 0)]
    pub seed: u64,
    /// Image height in pixels; `None`: the denoiser's `sample_size` times the VAE's factor.
    #[config(default = "None")]
    pub height: Option<usize>,
    /// Image width in pixels; `None` as for `height`.
    #[config(default = "None")]
    pub width: Option<usize>,
    /// T5 tokens of SD 3 (`max_sequence_length`, diffusers' default 256).
    #[config(default = 256)]
    pub max_sequence_length: usize,
}

impl GenerateConfig {
    /// Whether the model runs twice per step (unconditional and conditional).
    pub fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// Seeded standard-normal latents `[batch, channels, h, w]`, the same on every backend.
pub fn initial_latents<B: Backend>(
    shape: [usize; 4],
    seed: u64,
    device: &B::Device,
) -> Tensor<B, 4> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Denoises `latents` from the sampler's first step to its last.
///
/// With guidance, `uncond` holds the negative-prompt conditioning and each step runs the model
/// once on the doubled batch `[uncond ; cond]` (diffusers' order), then mixes the halves with
/// [`cfg`].
pub fn denoise<B: Backend, M: Denoiser<B>, S: Sampler>(
    model: &M,
    sampler: &S,
    mut latents: Tensor<B, 4>,
    cond: &TextCond<B>,
    uncond: Option<&TextCond<B>>,
    guidance_scale: f64,
) -> crate::Result<Tensor<B, 4>> {
    let device = latents.device();
    let batch = latents.dims()[0];
    let doubled = match uncond {
        Some(u) => Some(TextCond {
            hidden: Tensor::cat(vec![u.hidden.clone(), cond.hidden.clone()], 0),
            pooled: match (&u.pooled, &cond.pooled) {
                (Some(a), Some(b)) => Some(Tensor::cat(vec![a.clone(), b.clone()], 0)),
                (None, None) => None,
                _ => {
                    return Err(Error::Input(
                        "the negative and positive conditioning differ in pooled embeddings".into(),
                    ));
                }
            },
        }),
        None => None,
    };
    let timesteps = sampler.model_timesteps();
    if timesteps.is_empty() {
        return Err(Error::Input(
            "the sampler has no timesteps: call set_timesteps first".into(),
        ));
    }
    for (i, t) in timesteps.into_iter().enumerate() {
        latents = match &doubled {
            Some(c) => {
                let x = Tensor::cat(vec![latents.clone(), latents.clone()], 0);
                let t = Tensor::<B, 1>::full([2 * batch], t, &device);
                let out = model.denoise(x, t, c, &mut NoHook)?;
                let [u, c] = halves(out, batch);
                sampler.step(cfg(u, c, guidance_scale), i, latents)?
            }
            None => {
                let t = Tensor::<B, 1>::full([batch], t, &device);
                let out = model.denoise(latents.clone(), t, cond, &mut NoHook)?;
                sampler.step(out, i, latents)?
            }
        };
    }
    Ok(latents)
}

fn halves<B: Backend>(x: Tensor<B, 4>, batch: usize) -> [Tensor<B, 4>; 2] {
    let [_, c, h, w] = x.dims();
    [
        x.clone().slice([0..batch, 0..c, 0..h, 0..w]),
        x.slice([batch..2 * batch, 0..c, 0..h, 0..w]),
    ]
}
