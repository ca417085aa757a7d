//! The benchmark's base model: a tiny CLIP-style text encoder over the word vocabulary and a
//! tiny SD 3 MMDiT denoising 32x32 RGB pixels (no VAE), trained together from scratch.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::vocab::{SEQ_LEN, Vocab};
use crate::attention::AttentionBackend;
use crate::ctcal::TextCond;
use crate::error::Error;
use crate::mmdit::{SD3Transformer2DConfig, SD3Transformer2DModel};
use crate::text::clip::ClipActivation;
use crate::text::{ClipTextConfig, ClipTextModel};
use crate::train::{load_params, save_params};

/// The two halves' configs.
#[derive(Config, Debug)]
pub struct ShapesModelConfig {
    /// The text encoder (its `vocab_size` must be the vocabulary's).
    pub text: ClipTextConfig,
    /// The pixel-space denoiser (`in_channels` 3).
    pub denoiser: SD3Transformer2DConfig,
}

impl ShapesModelConfig {
    /// 2 text layers of width 64; an MMDiT of 4 blocks, 4 heads of 16, patch 2 on 32x32 RGB
    /// (256 image tokens, 16 text tokens).
    pub fn tiny() -> Self {
        let vocab = Vocab::default();
        let width = 64;
        let text = ClipTextConfig::new()
            .with_vocab_size(vocab.len())
            .with_hidden_size(width)
            .with_intermediate_size(4 * width)
            .with_projection_dim(width)
            .with_num_hidden_layers(2)
            .with_num_attention_heads(2)
            .with_max_position_embeddings(SEQ_LEN)
            .with_hidden_act(ClipActivation::Gelu)
            .with_bos_token_id(vocab.bos())
            .with_eos_token_id(vocab.eos())
            .with_pad_token_id(vocab.pad());
        let denoiser = SD3Transformer2DConfig::new()
            .with_sample_size(32)
            .with_patch_size(2)
            .with_in_channels(3)
            .with_out_channels(3)
            .with_num_layers(4)
            .with_attention_head_dim(16)
            .with_num_attention_heads(4)
            .with_joint_attention_dim(width)
            .with_caption_projection_dim(width)
            .with_pooled_projection_dim(width)
            .with_pos_embed_max_size(16);
        Self { text, denoiser }
    }

    /// Builds both halves with burn's default initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<ShapesModel<B>> {
        self.text.validate()?;
        self.denoiser.validate()?;
        if self.text.hidden_size != self.denoiser.joint_attention_dim
            || self.text.hidden_size != self.denoiser.pooled_projection_dim
        {
            return Err(Error::Config(format!(
                "shapes model: text width {} must equal the denoiser's joint_attention_dim {} \
                 and pooled_projection_dim {}",
                self.text.hidden_size,
                self.denoiser.joint_attention_dim,
                self.denoiser.pooled_projection_dim
            )));
        }
        Ok(ShapesModel {
            text: self.text.init(device),
            denoiser: self.denoiser.init(device),
        })
    }
}

/// Text encoder and denoiser as one module (one optimiser, one file).
#[derive(Module, Debug)]
pub struct ShapesModel<B: Backend> {
    /// Word-level CLIP-style encoder: hidden states condition, the end token's row pools.
    pub text: ClipTextModel<B>,
    /// Pixel-space MMDiT.
    pub denoiser: SD3Transformer2DModel<B>,
}

impl<B: AttentionBackend> ShapesModel<B> {
    /// Conditioning for encoded captions (`[batch, SEQ_LEN]` ids, see [`Vocab::encode`]).
    pub fn encode(&self, ids: &[Vec<usize>], device: &B::Device) -> crate::Result<TextCond<B>> {
        let batch = ids.len();
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
        if flat.len() != batch * SEQ_LEN {
            return Err(Error::Input(format!(
                "shapes model: {} ids for {batch} captions of {SEQ_LEN}",
                flat.len()
            )));
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, SEQ_LEN]), device);
        let out = self.text.forward(ids, false)?;
        Ok(TextCond {
            hidden: out.last_hidden_state,
            pooled: Some(out.pooler_output),
        })
    }
}

impl<B: Backend> ShapesModel<B> {
    /// Writes the parameters to `path` (safetensors, burn paths) through a temporary file.
    pub fn save(&self, path: &Path) -> crate::Result<()> {
        let tmp = path.with_extension("safetensors.tmp");
        // A temporary file left by an interrupted save is stale; the store will not overwrite.
        let _ = std::fs::remove_file(&tmp);
        save_params(self, &tmp, |_, _| true)?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Loads parameters written by [`save`](Self::save).
    pub fn load(self, path: &Path) -> crate::Result<Self> {
        load_params(self, path, |_, _| true)
    }
}
