//! [`AutoencoderKLConfig`]: the VAE's architecture with diffusers' field names
//! (`AutoencoderKL.__init__`), presets for the SD 2.1 and SD 3 VAEs, and reading a diffusers
//! `config.json`.

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// An encoder block type (diffusers `down_block_types` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownEncoderBlockType {
    /// Resnets, then a stride-2 convolution (none after the last level).
    DownEncoderBlock2D,
}

/// A decoder block type (diffusers `up_block_types` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpDecoderBlockType {
    /// Resnets, then a nearest-2x upsampling and a convolution (none after the last level).
    UpDecoderBlock2D,
}

/// Architecture of an [`AutoencoderKL`](super::AutoencoderKL), field for field diffusers'
/// `AutoencoderKL.__init__` arguments; defaults are diffusers' defaults.
#[derive(Config, Debug, PartialEq)]
pub struct AutoencoderKLConfig {
    /// Image channels in.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Image channels out.
    #[config(default = 3)]
    pub out_channels: usize,
    /// One encoder block per level.
    #[config(default = "vec![DownEncoderBlockType::DownEncoderBlock2D]")]
    pub down_block_types: Vec<DownEncoderBlockType>,
    /// One decoder block per level (the deepest first).
    #[config(default = "vec![UpDecoderBlockType::UpDecoderBlock2D]")]
    pub up_block_types: Vec<UpDecoderBlockType>,
    /// Channels of each level, the shallowest first.
    #[config(default = "vec![64]")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level (the decoder has one more per level).
    #[config(default = 1)]
    pub layers_per_block: usize,
    /// The activation; only `"silu"` is supported.
    #[config(default = "String::from(\"silu\")")]
    pub act_fn: String,
    /// Channels of the latent (the encoder outputs twice as many: mean and log-variance).
    #[config(default = 4)]
    pub latent_channels: usize,
    /// Groups of every group norm.
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// Image side the model was trained at (diffusers' tiling uses it; informational here).
    #[config(default = 32)]
    pub sample_size: usize,
    /// Multiplier that brings latents to unit variance for the denoiser.
    #[config(default = 0.18215)]
    pub scaling_factor: f64,
    /// Offset subtracted before scaling (SD 3); `None` means 0.
    #[config(default = "None")]
    pub shift_factor: Option<f64>,
    /// Per-channel latent means of some later VAEs; not used by SD 2.1 or SD 3 pipelines.
    #[config(default = "None")]
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent standard deviations; not used by SD 2.1 or SD 3 pipelines.
    #[config(default = "None")]
    pub latents_std: Option<Vec<f64>>,
    /// diffusers runs this VAE in f32 even in half-precision pipelines (informational here).
    #[config(default = true)]
    pub force_upcast: bool,
    /// A 1x1 convolution on the encoder's moments (`quant_conv`).
    #[config(default = true)]
    pub use_quant_conv: bool,
    /// A 1x1 convolution on the latent before the decoder (`post_quant_conv`).
    #[config(default = true)]
    pub use_post_quant_conv: bool,
    /// One self-attention in the encoder's and decoder's mid blocks.
    #[config(default = true)]
    pub mid_block_add_attention: bool,
}

/// The `config.json` fields this port understands (everything `AutoencoderKL` takes).
const KNOWN_FIELDS: [&str; 18] = [
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "act_fn",
    "latent_channels",
    "norm_num_groups",
    "sample_size",
    "scaling_factor",
    "shift_factor",
    "latents_mean",
    "latents_std",
    "force_upcast",
    "use_quant_conv",
    "use_post_quant_conv",
    "mid_block_add_attention",
];

impl AutoencoderKLConfig {
    /// `stabilityai/stable-diffusion-2-1` `vae/config.json`: four levels of 128 to 512
    /// channels, 4 latent channels, scaling 0.18215 (the SD 1.x VAE has the same layout).
    pub fn sd21() -> Self {
        Self::new()
            .with_down_block_types(vec![DownEncoderBlockType::DownEncoderBlock2D; 4])
            .with_up_block_types(vec![UpDecoderBlockType::UpDecoderBlock2D; 4])
            .with_block_out_channels(vec![128, 256, 512, 512])
            .with_layers_per_block(2)
            .with_sample_size(768)
    }

    /// `stabilityai/stable-diffusion-3-medium-diffusers` `vae/config.json`: the SD 2.1 layout
    /// with 16 latent channels, no quant convolutions, scaling 1.5305 and shift 0.0609.
    pub fn sd3_medium() -> Self {
        Self::sd21()
            .with_latent_channels(16)
            .with_sample_size(1024)
            .with_scaling_factor(1.5305)
            .with_shift_factor(Some(0.0609))
            .with_use_quant_conv(false)
            .with_use_post_quant_conv(false)
    }

    /// A tiny two-level VAE for tests: 8 and 16 channels, groups of 4, one resnet per level.
    pub fn tiny() -> Self {
        Self::new()
            .with_down_block_types(vec![DownEncoderBlockType::DownEncoderBlock2D; 2])
            .with_up_block_types(vec![UpDecoderBlockType::UpDecoderBlock2D; 2])
            .with_block_out_channels(vec![8, 16])
            .with_norm_num_groups(4)
    }

    /// How many times the encoder halves the image side (`levels - 1`).
    pub fn downscale(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks what diffusers assumes without checking: list lengths, group divisibility, SiLU.
    pub fn validate(&self) -> crate::Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return fail("block_out_channels is empty".into());
        }
        for (name, len) in [
            ("down_block_types", self.down_block_types.len()),
            ("up_block_types", self.up_block_types.len()),
        ] {
            if len != levels {
                return fail(format!(
                    "{name} has {len} entries but block_out_channels has {levels}"
                ));
            }
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if self.norm_num_groups == 0 || c == 0 || c % self.norm_num_groups != 0 {
                return fail(format!(
                    "block_out_channels[{i}] = {c} is not divisible by norm_num_groups = {}",
                    self.norm_num_groups
                ));
            }
        }
        if self.act_fn != "silu" {
            return fail(format!(
                "act_fn `{}` is not supported (only silu)",
                self.act_fn
            ));
        }
        if self.layers_per_block == 0 || self.latent_channels == 0 {
            return fail("layers_per_block and latent_channels must be > 0".into());
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor != 0.0) {
            return fail(format!(
                "scaling_factor {} must be finite and non-zero",
                self.scaling_factor
            ));
        }
        Ok(())
    }

    /// Reads a diffusers `AutoencoderKL` `config.json`; missing fields take diffusers'
    /// defaults, unknown fields are errors naming the field (so a config of another
    /// autoencoder is not silently misread).
    pub fn from_diffusers_json(path: &Path) -> crate::Result<Self> {
        crate::config::read_diffusers_config(
            path,
            &Self::new(),
            &KNOWN_FIELDS,
            "AutoencoderKL",
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
            AutoencoderKLConfig::sd21(),
            AutoencoderKLConfig::sd3_medium(),
            AutoencoderKLConfig::tiny(),
        ] {
            c.validate().unwrap();
        }
        assert_eq!(AutoencoderKLConfig::sd21().downscale(), 8);
        assert_eq!(AutoencoderKLConfig::tiny().downscale(), 2);
    }

    #[test]
    fn diffusers_json_reads_and_rejects() {
        let dir = std::env::temp_dir().join(format!("ctcal-vaecfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let read = |text: &str| {
            std::fs::write(&path, text).unwrap();
            AutoencoderKLConfig::from_diffusers_json(&path)
        };
        let c = read(
            r#"{"_class_name": "AutoencoderKL", "block_out_channels": [8, 16],
                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
                "norm_num_groups": 4, "latents_mean": null}"#,
        )
        .unwrap();
        assert_eq!(c, AutoencoderKLConfig::tiny());

        let err = |text: &str| read(text).unwrap_err().to_string();
        let e = err(r#"{"latent_channels": 4, "num_vq_embeddings": 256}"#);
        assert!(e.contains("`num_vq_embeddings`"), "{e}");
        let e = err(r#"{"down_block_types": ["AttnDownEncoderBlock2D"]}"#);
        assert!(e.contains("AttnDownEncoderBlock2D"), "{e}");
        let e = err(r#"{"block_out_channels": [8, 16]}"#);
        assert!(e.contains("down_block_types has 1 entries"), "{e}");
        let e = err(r#"{"act_fn": "gelu"}"#);
        assert!(e.contains("act_fn `gelu`"), "{e}");
        let e = err(r#"{"norm_num_groups": 5}"#);
        assert!(e.contains("norm_num_groups = 5"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
