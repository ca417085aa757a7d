//! [`SD3Transformer2DConfig`]: the MMDiT's architecture with diffusers' field names, presets for
//! the published SD 3 / 3.5 checkpoints, and reading a diffusers `config.json`.

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Query/key normalisation inside attention (diffusers `qk_norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QkNorm {
    /// `"rms_norm"`: per-head RMS norm with a learned scale (SD 3.5).
    #[serde(rename = "rms_norm")]
    RmsNorm,
}

/// Architecture of an [`SD3Transformer2DModel`](super::SD3Transformer2DModel), field for field
/// diffusers' `SD3Transformer2DModel.__init__` arguments.
#[derive(Config, Debug, PartialEq)]
pub struct SD3Transformer2DConfig {
    /// Latent side the position table was built for (`sample_size`).
    #[config(default = 128)]
    pub sample_size: usize,
    /// Side of the square patches (`patch_size`).
    #[config(default = 2)]
    pub patch_size: usize,
    /// Latent channels in.
    #[config(default = 16)]
    pub in_channels: usize,
    /// Number of `JointTransformerBlock`s (the last is `context_pre_only`).
    #[config(default = 18)]
    pub num_layers: usize,
    /// Width of one head.
    #[config(default = 64)]
    pub attention_head_dim: usize,
    /// Number of heads; the model width is `num_attention_heads * attention_head_dim`.
    #[config(default = 18)]
    pub num_attention_heads: usize,
    /// Width of the text embeddings fed in (`encoder_hidden_states`).
    #[config(default = 4096)]
    pub joint_attention_dim: usize,
    /// Width of the text stream after `context_embedder` (equals the model width in every
    /// published checkpoint).
    #[config(default = 1152)]
    pub caption_projection_dim: usize,
    /// Width of the pooled text embedding (`pooled_projections`).
    #[config(default = 2048)]
    pub pooled_projection_dim: usize,
    /// Latent channels out.
    #[config(default = 16)]
    pub out_channels: usize,
    /// Side (in patches) of the stored position table, cropped to each input's patch grid.
    #[config(default = 96)]
    pub pos_embed_max_size: usize,
    /// Blocks with a second, image-only attention (`attn2`; SD 3.5 medium: 0..=12).
    #[config(default = "Vec::new()")]
    pub dual_attention_layers: Vec<usize>,
    /// Query/key normalisation (`None` for SD 3, RMS for SD 3.5).
    #[config(default = "None")]
    pub qk_norm: Option<QkNorm>,
}

/// The `config.json` fields this port understands (everything `SD3Transformer2DModel` takes).
const KNOWN_FIELDS: [&str; 13] = [
    "sample_size",
    "patch_size",
    "in_channels",
    "num_layers",
    "attention_head_dim",
    "num_attention_heads",
    "joint_attention_dim",
    "caption_projection_dim",
    "pooled_projection_dim",
    "out_channels",
    "pos_embed_max_size",
    "dual_attention_layers",
    "qk_norm",
];

impl SD3Transformer2DConfig {
    /// `stabilityai/stable-diffusion-3-medium-diffusers` `transformer/config.json` (2B).
    pub fn sd3_medium() -> Self {
        Self::new()
            .with_num_layers(24)
            .with_num_attention_heads(24)
            .with_caption_projection_dim(1536)
            .with_pos_embed_max_size(192)
    }

    /// `stabilityai/stable-diffusion-3.5-medium` (2.5B): RMS qk-norm and dual attention in
    /// blocks 0 to 12.
    pub fn sd35_medium() -> Self {
        Self::sd3_medium()
            .with_pos_embed_max_size(384)
            .with_qk_norm(Some(QkNorm::RmsNorm))
            .with_dual_attention_layers((0..=12).collect())
    }

    /// `stabilityai/stable-diffusion-3.5-large` (8B): 38 blocks of 38 heads, RMS qk-norm.
    pub fn sd35_large() -> Self {
        Self::new()
            .with_num_layers(38)
            .with_num_attention_heads(38)
            .with_caption_projection_dim(2432)
            .with_pos_embed_max_size(192)
            .with_qk_norm(Some(QkNorm::RmsNorm))
    }

    /// A tiny SD 3 layout for tests and the embedded default: width 32 (2 heads of 16), three
    /// blocks, 4 latent channels, a 16x16-patch position table.
    pub fn tiny() -> Self {
        Self::new()
            .with_sample_size(32)
            .with_in_channels(4)
            .with_out_channels(4)
            .with_num_layers(3)
            .with_attention_head_dim(16)
            .with_num_attention_heads(2)
            .with_joint_attention_dim(32)
            .with_caption_projection_dim(32)
            .with_pooled_projection_dim(32)
            .with_pos_embed_max_size(16)
    }

    /// Model width (`num_attention_heads * attention_head_dim`).
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Checks the consistency diffusers assumes without checking.
    pub fn validate(&self) -> crate::Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if self.num_layers == 0 || self.num_attention_heads == 0 || self.attention_head_dim == 0 {
            return fail(
                "num_layers, num_attention_heads and attention_head_dim must be > 0".into(),
            );
        }
        if self.caption_projection_dim != self.inner_dim() {
            return fail(format!(
                "caption_projection_dim {} must equal num_attention_heads * attention_head_dim = {}",
                self.caption_projection_dim,
                self.inner_dim()
            ));
        }
        if !self.inner_dim().is_multiple_of(4) {
            return fail(format!(
                "model width {} must be a multiple of 4 (2D sin-cos position table)",
                self.inner_dim()
            ));
        }
        if self.patch_size == 0 || self.pos_embed_max_size == 0 {
            return fail("patch_size and pos_embed_max_size must be > 0".into());
        }
        if let Some(&i) = self
            .dual_attention_layers
            .iter()
            .find(|&&i| i >= self.num_layers)
        {
            return fail(format!(
                "dual_attention_layers names block {i} but num_layers is {}",
                self.num_layers
            ));
        }
        Ok(())
    }

    /// Reads a diffusers `SD3Transformer2DModel` `config.json`; missing fields take diffusers'
    /// defaults, unknown fields are errors naming the field (so a config of another model is
    /// not silently misread).
    pub fn from_diffusers_json(path: &Path) -> crate::Result<Self> {
        crate::config::read_diffusers_config(
            path,
            &Self::new(),
            &KNOWN_FIELDS,
            "SD3Transformer2DModel",
            Self::validate,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_consistent() {
        for c in [
            SD3Transformer2DConfig::sd3_medium(),
            SD3Transformer2DConfig::sd35_medium(),
            SD3Transformer2DConfig::sd35_large(),
            SD3Transformer2DConfig::tiny(),
        ] {
            c.validate().unwrap();
        }
        assert_eq!(SD3Transformer2DConfig::sd3_medium().inner_dim(), 1536);
        assert_eq!(SD3Transformer2DConfig::sd35_large().inner_dim(), 2432);
    }

    #[test]
    fn diffusers_json_reads_and_rejects() {
        let dir = std::env::temp_dir().join(format!("ctcal-sd3cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(
            &path,
            r#"{"_class_name": "SD3Transformer2DModel", "num_layers": 24,
                "num_attention_heads": 24, "caption_projection_dim": 1536,
                "pos_embed_max_size": 384, "qk_norm": "rms_norm",
                "dual_attention_layers": [0,1,2,3,4,5,6,7,8,9,10,11,12]}"#,
        )
        .unwrap();
        let c = SD3Transformer2DConfig::from_diffusers_json(&path).unwrap();
        assert_eq!(c, SD3Transformer2DConfig::sd35_medium());

        std::fs::write(&path, r#"{"num_layers": 2, "guidance_embeds": true}"#).unwrap();
        let err = SD3Transformer2DConfig::from_diffusers_json(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("guidance_embeds"), "{err}");

        std::fs::write(&path, r#"{"caption_projection_dim": 7}"#).unwrap();
        let err = SD3Transformer2DConfig::from_diffusers_json(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("caption_projection_dim 7"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
