//! [`ClipTextConfig`]: the CLIP text tower's architecture with transformers' `CLIPTextConfig`
//! field names, presets for the published SD 2.1 and SD 3 text encoders, and reading a
//! transformers `config.json`.

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::config::ConfigFile;

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClipActivation {
    /// `"quick_gelu"`: `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x and SD 3's CLIP-L).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// `"gelu"`: exact (erf) GELU (OpenCLIP ViT-H and ViT-bigG: SD 2.x, SD 3's CLIP-G).
    #[serde(rename = "gelu")]
    Gelu,
}

/// Architecture of a [`ClipTextModel`](super::ClipTextModel) or
/// [`ClipTextModelWithProjection`](super::ClipTextModelWithProjection), field for field
/// transformers' `CLIPTextConfig` (defaults are transformers' defaults).
#[derive(Config, Debug, PartialEq)]
pub struct ClipTextConfig {
    /// Token vocabulary size (rows of `token_embedding`).
    #[config(default = 49408)]
    pub vocab_size: usize,
    /// Model width.
    #[config(default = 512)]
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer (`fc1` output).
    #[config(default = 2048)]
    pub intermediate_size: usize,
    /// Output width of `text_projection` (the projection variant only).
    #[config(default = 512)]
    pub projection_dim: usize,
    /// Number of encoder layers.
    #[config(default = 12)]
    pub num_hidden_layers: usize,
    /// Attention heads per layer; `hidden_size` must be a multiple.
    #[config(default = 8)]
    pub num_attention_heads: usize,
    /// Rows of the learned position table: the longest input.
    #[config(default = 77)]
    pub max_position_embeddings: usize,
    /// MLP activation.
    #[config(default = "ClipActivation::QuickGelu")]
    pub hidden_act: ClipActivation,
    /// Epsilon of every LayerNorm.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Start-of-text token id (not used by the forward; kept for tokenizers).
    #[config(default = 49406)]
    pub bos_token_id: usize,
    /// End-of-text token id. `2` selects transformers' legacy pooling (the position of the
    /// largest token id), any other value the first position holding this id.
    #[config(default = 49407)]
    pub eos_token_id: usize,
    /// Padding token id (not used by the forward; kept for tokenizers).
    #[config(default = 1)]
    pub pad_token_id: usize,
}

/// The field names [`ClipTextConfig`] reads.
const FIELDS: [&str; 12] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
];

impl ClipTextConfig {
    /// SD 2.0/2.1's text encoder, the OpenCLIP ViT-H/14 text tower without its last layer, as
    /// `stabilityai/stable-diffusion-2-1/text_encoder/config.json` gives it (`CLIPTextModel`,
    /// transformers 4.25: legacy `eos_token_id` 2, so pooling takes the largest id).
    pub fn sd21() -> Self {
        Self::new()
            .with_hidden_size(1024)
            .with_intermediate_size(4096)
            .with_projection_dim(512)
            .with_num_hidden_layers(23)
            .with_num_attention_heads(16)
            .with_hidden_act(ClipActivation::Gelu)
            .with_bos_token_id(0)
            .with_eos_token_id(2)
    }

    /// SD 3's `text_encoder` (OpenAI CLIP ViT-L/14, `CLIPTextModelWithProjection`), as
    /// `stabilityai/stable-diffusion-3-medium-diffusers/text_encoder/config.json` gives it.
    pub fn sd3_clip_l() -> Self {
        Self::new()
            .with_hidden_size(768)
            .with_intermediate_size(3072)
            .with_projection_dim(768)
            .with_num_hidden_layers(12)
            .with_num_attention_heads(12)
            .with_bos_token_id(0)
            .with_eos_token_id(2)
    }

    /// SD 3's `text_encoder_2` (OpenCLIP ViT-bigG/14, `CLIPTextModelWithProjection`), as
    /// `stabilityai/stable-diffusion-3-medium-diffusers/text_encoder_2/config.json` gives it.
    pub fn sd3_clip_g() -> Self {
        Self::new()
            .with_hidden_size(1280)
            .with_intermediate_size(5120)
            .with_projection_dim(1280)
            .with_num_hidden_layers(32)
            .with_num_attention_heads(20)
            .with_hidden_act(ClipActivation::Gelu)
            .with_bos_token_id(0)
            .with_eos_token_id(2)
    }

    /// A tiny SD 2.1-shaped tower for tests (the `text_clip/sd21` fixture): width 32, 2
    /// layers, 4 heads, exact GELU, legacy pooling.
    pub fn tiny() -> Self {
        Self::new()
            .with_vocab_size(99)
            .with_hidden_size(32)
            .with_intermediate_size(48)
            .with_projection_dim(20)
            .with_num_hidden_layers(2)
            .with_num_attention_heads(4)
            .with_max_position_embeddings(16)
            .with_hidden_act(ClipActivation::Gelu)
            .with_bos_token_id(97)
            .with_eos_token_id(2)
            .with_pad_token_id(0)
    }

    /// Reads a transformers `config.json` (`CLIPTextConfig`, as `save_pretrained` writes it
    /// for `CLIPTextModel` or `CLIPTextModelWithProjection`).
    ///
    /// Reads the fields of this struct, missing ones taking transformers' defaults; a field
    /// of the wrong type (e.g. `"hidden_size": "1024"`, an `eos_token_id` list) is an error
    /// naming it. Other fields are ignored (see [`ConfigFile`]), except that an
    /// `attention_dropout` above 0 is refused as unsupported (the port has no dropout).
    pub fn from_transformers_json(path: &Path) -> crate::Result<Self> {
        let json = ConfigFile::read(path)?;
        let d = Self::new();
        let config = Self {
            vocab_size: json.get(FIELDS[0], d.vocab_size)?,
            hidden_size: json.get(FIELDS[1], d.hidden_size)?,
            intermediate_size: json.get(FIELDS[2], d.intermediate_size)?,
            projection_dim: json.get(FIELDS[3], d.projection_dim)?,
            num_hidden_layers: json.get(FIELDS[4], d.num_hidden_layers)?,
            num_attention_heads: json.get(FIELDS[5], d.num_attention_heads)?,
            max_position_embeddings: json.get(FIELDS[6], d.max_position_embeddings)?,
            hidden_act: json.get(FIELDS[7], d.hidden_act)?,
            layer_norm_eps: json.get(FIELDS[8], d.layer_norm_eps)?,
            bos_token_id: json.get(FIELDS[9], d.bos_token_id)?,
            eos_token_id: json.get(FIELDS[10], d.eos_token_id)?,
            pad_token_id: json.get(FIELDS[11], d.pad_token_id)?,
        };
        if json.get("attention_dropout", 0.0f64)? != 0.0 {
            return Err(json.error("attention_dropout > 0 is not supported"));
        }
        config.validate().map_err(|e| json.error(&e.to_string()))?;
        Ok(config)
    }

    /// Checks the shapes: positive sizes, `hidden_size` a multiple of the head count, a
    /// positive `layer_norm_eps`.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Config(m));
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("projection_dim", self.projection_dim),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return bad(format!("CLIP text config: {name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "CLIP text config: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return bad(format!(
                "CLIP text config: layer_norm_eps must be positive, got {}",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
