//! What both pipelines share: the generation settings, the sampling loop (classifier-free
//! guidance around any [`Denoiser`], stepped by any [`Sampler`]), the run from prompts to
//! decoded images, and token-id helpers.

use crate::nn::normal_tensor;
use burn::config::Config;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::attention::NoHook;
use crate::backend::KernelBackend;
use crate::denoiser::{Denoiser, TextCond};
use crate::error::Error;
use crate::schedule::{Sampler, cfg};
use crate::text::Encoding;
use crate::vae::AutoencoderKL;

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
    normal_tensor(&mut StdRng::seed_from_u64(seed), shape, device)
}

/// Denoises `latents` from the sampler's first step to its last.
///
/// With guidance, `uncond` holds the negative-prompt conditioning and each step runs the model
/// once on the doubled batch `[uncond ; cond]` (diffusers' order), then mixes the halves with
/// [`cfg()`].
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

/// What a pipeline generated.
#[derive(Debug, Clone)]
pub struct Generated<B: Backend> {
    /// The denoised latents (scaled, as the denoiser sees them).
    pub latents: Tensor<B, 4>,
    /// Decoded images in `[0, 1]`, `[batch, 3, h, w]`.
    pub images: Tensor<B, 4>,
    /// Prompts cut to the tokenizer's length.
    pub truncated: Vec<String>,
}

/// What generation needs besides the denoiser, sampler and prompt encoder: shared by both
/// pipelines.
pub(crate) struct Generation<'a, B: Backend> {
    pub vae: &'a AutoencoderKL<B>,
    /// The denoiser's native latent side.
    pub sample_size: usize,
    /// Latent sides must divide by this (the MMDiT's patch size).
    pub size_multiple: usize,
    pub device: &'a B::Device,
}

impl<B: KernelBackend> Generation<'_, B> {
    /// Encodes prompts (and negative prompts under guidance), draws or takes the initial
    /// latents, denoises with classifier-free guidance and decodes.
    #[allow(clippy::too_many_arguments)]
    pub fn generate<M: Denoiser<B>, S: Sampler>(
        &self,
        denoiser: &M,
        mut sampler: S,
        prompts: &[&str],
        negative: Option<&[&str]>,
        config: &GenerateConfig,
        latents: Option<Tensor<B, 4>>,
        encode: impl Fn(&[&str]) -> crate::Result<(TextCond<B>, Vec<String>)>,
    ) -> crate::Result<Generated<B>> {
        let (cond, mut truncated) = encode(prompts)?;
        let uncond = if config.guided() {
            let empty = vec![""; prompts.len()];
            let negative = negative.unwrap_or(&empty);
            check_len(prompts.len(), negative.len())?;
            let (u, t) = encode(negative)?;
            truncated.extend(t);
            Some(u)
        } else {
            None
        };
        sampler.set_timesteps(config.steps)?;
        let latents = match latents {
            Some(l) => l,
            None => {
                let f = self.vae.downscale;
                let (h, w) = pixel_size(config, self.sample_size * f, f * self.size_multiple)?;
                let shape = [prompts.len(), self.vae.latent_channels, h / f, w / f];
                initial_latents(shape, config.seed, self.device)
                    .mul_scalar(sampler.init_noise_sigma())
            }
        };
        let latents = denoise(
            denoiser,
            &sampler,
            latents,
            &cond,
            uncond.as_ref(),
            config.guidance_scale,
        )?;
        let images = decode(self.vae, latents.clone())?;
        Ok(Generated {
            latents,
            images,
            truncated,
        })
    }
}

/// Decodes scaled latents to images in `[0, 1]` (diffusers' `postprocess` denormalisation).
pub fn decode<B: KernelBackend>(
    vae: &AutoencoderKL<B>,
    latents: Tensor<B, 4>,
) -> crate::Result<Tensor<B, 4>> {
    let pixels = vae.decode(vae.image_from_latents(latents))?;
    Ok(pixels.div_scalar(2.0).add_scalar(0.5).clamp(0.0, 1.0))
}

/// Token ids `[batch, seq]` of padded encodings.
pub fn token_ids<B: Backend>(
    encodings: &[Encoding],
    device: &B::Device,
) -> crate::Result<Tensor<B, 2, Int>> {
    let seq = encodings.first().map_or(0, |e| e.ids.len());
    if encodings.iter().any(|e| e.ids.len() != seq) {
        return Err(Error::Input(
            "encodings of different lengths in one batch".into(),
        ));
    }
    let ids: Vec<i64> = encodings
        .iter()
        .flat_map(|e| e.ids.iter().map(|&i| i as i64))
        .collect();
    Ok(Tensor::from_data(
        TensorData::new(ids, [encodings.len(), seq]),
        device,
    ))
}

/// The prompts whose encoding was truncated.
pub fn truncated(prompts: &[&str], encodings: &[Encoding]) -> Vec<String> {
    prompts
        .iter()
        .zip(encodings)
        .filter(|(_, e)| e.truncated)
        .map(|(p, _)| p.to_string())
        .collect()
}

fn check_len(prompts: usize, negative: usize) -> crate::Result<()> {
    if prompts == negative {
        return Ok(());
    }
    Err(Error::Input(format!(
        "{negative} negative prompts for {prompts} prompts: give one per prompt"
    )))
}

/// `(height, width)` in pixels: the config's or `default`, which must divide by `multiple`.
fn pixel_size(
    config: &GenerateConfig,
    default: usize,
    multiple: usize,
) -> crate::Result<(usize, usize)> {
    let (h, w) = (
        config.height.unwrap_or(default),
        config.width.unwrap_or(default),
    );
    if h == 0 || w == 0 || h % multiple != 0 || w % multiple != 0 {
        return Err(Error::Input(format!(
            "image size {h}x{w} must be positive multiples of {multiple}"
        )));
    }
    Ok((h, w))
}
