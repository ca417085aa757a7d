//! SD 3 as diffusers' `StableDiffusion3Pipeline`: two CLIP text models with projection, an
//! optional T5, the MMDiT, AutoencoderKL and the flow-matching Euler sampler.

use std::path::Path;

use burn::tensor::{Tensor, backend::Backend};

use super::denoise::{GenerateConfig, Generated, Generation, token_ids};
use super::index::PipelineFolder;
use crate::attention::AttentionBackend;
use crate::denoiser::{Denoiser, TextCond};
use crate::error::Result;
use crate::hub::ModelLocation;
use crate::mmdit::{SD3Transformer2DConfig, SD3Transformer2DModel};
use crate::schedule::{FlowEulerConfig, FlowEulerScheduler};
use crate::text::{
    ClipTextConfig, ClipTokenizer, Encoding, Sd3TextEncoders, Sd3TokenIds, T5Config, T5Tokenizer,
    T5WordTokens, load_transformers,
};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::weights::load_module;

/// The pipeline classes whose folders [`StableDiffusion3::load`] reads.
pub const SD3_CLASSES: &[&str] = &["StableDiffusion3Pipeline"];

const CLIP_TOKENIZERS: &[&str] = &["CLIPTokenizer", "CLIPTokenizerFast"];

/// What SD 3's three tokenizers make of a batch of prompts ([`StableDiffusion3::tokenize`]).
#[derive(Debug, Clone)]
pub struct Sd3Encodings {
    /// CLIP-L's (77 tokens).
    pub clip_l: Vec<Encoding>,
    /// CLIP-G's (77 tokens).
    pub clip_g: Vec<Encoding>,
    /// T5's (`max_sequence_length` tokens), where the pipeline has T5.
    pub t5: Option<Vec<Encoding>>,
    /// The prompts some tokenizer truncated.
    pub truncated: Vec<String>,
}

/// A Stable Diffusion 3 / 3.5 pipeline.
#[derive(Debug)]
pub struct StableDiffusion3<B: Backend> {
    /// `tokenizer/` (CLIP-L).
    pub tokenizer: ClipTokenizer,
    /// `tokenizer_2/` (CLIP-G).
    pub tokenizer_2: ClipTokenizer,
    /// `tokenizer_3/` (T5), absent where the pipeline was saved without T5.
    pub tokenizer_3: Option<T5Tokenizer>,
    /// The three text encoders.
    pub text_encoders: Sd3TextEncoders<B>,
    /// `transformer/`.
    pub transformer: SD3Transformer2DModel<B>,
    /// `vae/`.
    pub vae: AutoencoderKL<B>,
    /// `scheduler/`.
    pub scheduler: FlowEulerConfig,
    /// The transformer's `sample_size` and `joint_attention_dim`.
    pub sample_size: usize,
    /// Width of the T5 tokens (zeros without T5).
    pub joint_attention_dim: usize,
    /// T5 tokens when encoding captions for training (diffusers' default 256; generation
    /// takes [`GenerateConfig::max_sequence_length`]).
    pub max_sequence_length: usize,
    /// Where the models live.
    pub device: B::Device,
}

impl<B: AttentionBackend> StableDiffusion3<B> {
    /// Loads the pipeline a [`ModelLocation`] found (a folder or a model in the Hugging Face
    /// cache, diffusers' `from_pretrained`); a file missing from a cached snapshot is named
    /// with the command that fetches it.
    pub fn from_pretrained(
        location: &ModelLocation,
        variant: Option<&str>,
        device: &B::Device,
    ) -> Result<Self> {
        Self::load(&location.root, variant, device).map_err(|e| location.explain(e))
    }

    /// Loads every component of a diffusers SD 3 pipeline folder (`text_encoder_3` and
    /// `tokenizer_3` may be `[null, null]`); `variant` as in [`load_module`].
    pub fn load(root: &Path, variant: Option<&str>, device: &B::Device) -> Result<Self> {
        let folder = PipelineFolder::open(root)?;
        folder.expect_class(SD3_CLASSES)?;
        let tokenizer =
            ClipTokenizer::from_folder(folder.component("tokenizer", CLIP_TOKENIZERS)?)?;
        let tokenizer_2 =
            ClipTokenizer::from_folder(folder.component("tokenizer_2", CLIP_TOKENIZERS)?)?;
        let tokenizer_3 = folder
            .optional("tokenizer_3", &["T5Tokenizer", "T5TokenizerFast"])?
            .map(T5Tokenizer::from_folder)
            .transpose()?;
        let clip = |name: &str| -> Result<_> {
            let dir = folder.component(name, &["CLIPTextModelWithProjection"])?;
            let config = ClipTextConfig::from_transformers_json(&dir.join("config.json"))?;
            Ok(load_transformers(config.init_with_projection(device), &dir, variant)?.0)
        };
        let text_encoder = clip("text_encoder")?;
        let text_encoder_2 = clip("text_encoder_2")?;
        let text_encoder_3 = match folder.optional("text_encoder_3", &["T5EncoderModel"])? {
            Some(dir) => {
                let config = T5Config::from_transformers_json(&dir.join("config.json"))?;
                Some(load_transformers(config.init(device)?, &dir, variant)?.0)
            }
            None => None,
        };
        let dir = folder.component("transformer", &["SD3Transformer2DModel"])?;
        let config = SD3Transformer2DConfig::from_diffusers_json(&dir.join("config.json"))?;
        let (sample_size, joint_attention_dim) = (config.sample_size, config.joint_attention_dim);
        let (transformer, _) = load_module(config.init(device), &dir, variant)?;
        let dir = folder.component("vae", &["AutoencoderKL"])?;
        let config = AutoencoderKLConfig::from_diffusers_json(&dir.join("config.json"))?;
        let (vae, _) = load_module(config.init(device)?, &dir, variant)?;
        let dir = folder.component("scheduler", &["FlowMatchEulerDiscreteScheduler"])?;
        let scheduler = FlowEulerConfig::from_diffusers_json(&dir.join("scheduler_config.json"))?;
        Ok(Self {
            tokenizer,
            tokenizer_2,
            tokenizer_3,
            text_encoders: Sd3TextEncoders {
                text_encoder,
                text_encoder_2,
                text_encoder_3,
            },
            transformer,
            vae,
            scheduler,
            sample_size,
            joint_attention_dim,
            max_sequence_length: 256,
            device: device.clone(),
        })
    }

    /// The T5 part of the text sequence's word positions ([`T5WordTokens`] at
    /// `max_sequence_length`), when the pipeline has T5 (without it that part is zeros).
    pub fn t5_word_tokens(&self) -> Option<T5WordTokens<'_>> {
        match (&self.tokenizer_3, &self.text_encoders.text_encoder_3) {
            (Some(tokenizer), Some(_)) => Some(T5WordTokens {
                tokenizer,
                max_length: self.max_sequence_length,
            }),
            _ => None,
        }
    }

    /// SD 3's conditioning for `prompts` (`encode_prompt`): CLIP tokens (77) then
    /// `max_sequence_length` T5 tokens, and the pooled embeddings; plus the prompts some
    /// tokenizer truncated.
    pub fn encode_prompts(
        &self,
        prompts: &[&str],
        max_sequence_length: usize,
    ) -> Result<(TextCond<B>, Vec<String>)> {
        self.encode_prompts_with(&self.text_encoders, prompts, max_sequence_length)
    }

    /// [`encode_prompts`](Self::encode_prompts) with other text encoders of the same shapes
    /// (CLIPs being fine-tuned, with LoRA).
    pub fn encode_prompts_with(
        &self,
        encoders: &Sd3TextEncoders<B>,
        prompts: &[&str],
        max_sequence_length: usize,
    ) -> Result<(TextCond<B>, Vec<String>)> {
        let tokens = self.tokenize(prompts, max_sequence_length)?;
        let t5 = tokens
            .t5
            .as_ref()
            .map(|e| token_ids::<B>(e, &self.device))
            .transpose()?;
        let ids = Sd3TokenIds {
            clip_l: token_ids::<B>(&tokens.clip_l, &self.device)?,
            clip_g: token_ids::<B>(&tokens.clip_g, &self.device)?,
            t5,
        };
        let embeds = encoders.encode(ids, max_sequence_length, self.joint_attention_dim)?;
        Ok((
            TextCond {
                hidden: embeds.prompt_embeds,
                pooled: Some(embeds.pooled_prompt_embeds),
            },
            tokens.truncated,
        ))
    }

    /// The three tokenizers' encodings of `prompts` (T5's, of `max_sequence_length` tokens,
    /// only where the pipeline has T5) and the prompts any of them truncated.
    pub fn tokenize(&self, prompts: &[&str], max_sequence_length: usize) -> Result<Sd3Encodings> {
        let clip_l = self.tokenizer.encode_batch(prompts)?;
        let clip_g = self.tokenizer_2.encode_batch(prompts)?;
        let t5 = match &self.tokenizer_3 {
            Some(t) if self.text_encoders.text_encoder_3.is_some() => {
                Some(t.encode_batch(prompts, max_sequence_length)?)
            }
            _ => None,
        };
        let truncated = (0..prompts.len())
            .filter(|&i| {
                clip_l[i].truncated
                    || clip_g[i].truncated
                    || t5.as_ref().is_some_and(|e: &Vec<_>| e[i].truncated)
            })
            .map(|i| prompts[i].to_string())
            .collect();
        Ok(Sd3Encodings {
            clip_l,
            clip_g,
            t5,
            truncated,
        })
    }

    /// Generates one image per prompt, as [`super::StableDiffusion::generate`] does, with the
    /// flow sampler (the transformer is fed `1000 * sigma`).
    pub fn generate(
        &self,
        prompts: &[&str],
        negative: Option<&[&str]>,
        config: &GenerateConfig,
        latents: Option<Tensor<B, 4>>,
    ) -> Result<Generated<B>> {
        self.generate_with(&self.transformer, prompts, negative, config, latents)
    }

    /// [`generate`](Self::generate) with another denoiser of the same shape in place of the
    /// pipeline's own (a model being fine-tuned, rendering validation images).
    pub fn generate_with<M: Denoiser<B>>(
        &self,
        denoiser: &M,
        prompts: &[&str],
        negative: Option<&[&str]>,
        config: &GenerateConfig,
        latents: Option<Tensor<B, 4>>,
    ) -> Result<Generated<B>> {
        let sampler: FlowEulerScheduler = self.scheduler.init()?;
        let n = config.max_sequence_length;
        self.generation()
            .generate(denoiser, sampler, prompts, negative, config, latents, |p| {
                self.encode_prompts(p, n)
            })
    }

    /// Images for `prompts` (empty negative prompts, seeded noise) with `denoiser` and
    /// `encoders` in place of the pipeline's own: a transformer and CLIPs being fine-tuned
    /// together, rendering validation images.
    pub fn generate_with_text_encoders<M: Denoiser<B>>(
        &self,
        denoiser: &M,
        encoders: &Sd3TextEncoders<B>,
        prompts: &[&str],
        config: &GenerateConfig,
    ) -> Result<Generated<B>> {
        let sampler: FlowEulerScheduler = self.scheduler.init()?;
        let n = config.max_sequence_length;
        self.generation()
            .generate(denoiser, sampler, prompts, None, config, None, |p| {
                self.encode_prompts_with(encoders, p, n)
            })
    }

    fn generation(&self) -> Generation<'_, B> {
        Generation {
            vae: &self.vae,
            sample_size: self.sample_size,
            size_multiple: self.transformer.patch_size(),
            device: &self.device,
        }
    }
}
