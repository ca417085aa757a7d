//! [`UNet2DConditionConfig`]: the UNet's architecture, with diffusers' field names, presets for
//! the published SD 2.1 checkpoints, and the one translation from a diffusers `config.json`.

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::config::ConfigFile;
use crate::error::Error;

/// A down block type (diffusers `down_block_types` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownBlockType {
    /// Resnets interleaved with `Transformer2DModel`s.
    CrossAttnDownBlock2D,
    /// Resnets only.
    DownBlock2D,
}

/// An up block type (diffusers `up_block_types` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpBlockType {
    /// Resnets interleaved with `Transformer2DModel`s.
    CrossAttnUpBlock2D,
    /// Resnets only.
    UpBlock2D,
}

/// Architecture of a [`UNet2DConditionModel`](super::UNet2DConditionModel).
///
/// Field names are diffusers', except that per-block values are always lists and
/// `num_attention_heads` holds resolved head counts (diffusers' SD configs store head counts
/// under `attention_head_dim`; [`Self::from_diffusers_json`] is the one place that translates).
#[derive(Config, Debug, PartialEq)]
pub struct UNet2DConditionConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// Cosine half first in the timestep features.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the timestep features.
    pub freq_shift: f64,
    /// One entry per resolution level, top to bottom.
    pub down_block_types: Vec<DownBlockType>,
    /// One entry per resolution level, bottom to top.
    pub up_block_types: Vec<UpBlockType>,
    /// Channels of each level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: Vec<usize>,
    /// `BasicTransformerBlock`s per `Transformer2DModel`, per level.
    pub transformer_layers_per_block: Vec<usize>,
    /// Padding of the stride-2 downsampling convolutions.
    pub downsample_padding: usize,
    /// Output scale of the mid block resnets.
    pub mid_block_scale_factor: f64,
    /// Groups of every resnet and output `GroupNorm`.
    pub norm_num_groups: usize,
    /// Epsilon of the resnet and output `GroupNorm`s.
    pub norm_eps: f64,
    /// Width of the text conditioning.
    pub cross_attention_dim: usize,
    /// Attention heads per level (resolved head counts).
    pub num_attention_heads: Vec<usize>,
    /// `Linear` (SD 2) instead of 1x1 `Conv2d` (SD 1) for `proj_in`/`proj_out`.
    pub use_linear_projection: bool,
    /// Attention softmax in f32 (SD 2.1 768).
    pub upcast_attention: bool,
    /// Latent side the model was trained at (informational; inputs may be any multiple of 8).
    pub sample_size: usize,
}

impl UNet2DConditionConfig {
    /// `stabilityai/stable-diffusion-2-1` `unet/config.json`: 768 px (96x96 latents), trained
    /// for v-prediction, attention upcast to f32.
    pub fn sd21() -> Self {
        Self::sd2(96, true)
    }

    /// `stabilityai/stable-diffusion-2-1-base` `unet/config.json`: 512 px (64x64 latents),
    /// epsilon prediction.
    pub fn sd21_base() -> Self {
        Self::sd2(64, false)
    }

    fn sd2(sample_size: usize, upcast_attention: bool) -> Self {
        use DownBlockType::*;
        use UpBlockType::*;
        Self {
            in_channels: 4,
            out_channels: 4,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                CrossAttnDownBlock2D,
                CrossAttnDownBlock2D,
                CrossAttnDownBlock2D,
                DownBlock2D,
            ],
            up_block_types: vec![
                UpBlock2D,
                CrossAttnUpBlock2D,
                CrossAttnUpBlock2D,
                CrossAttnUpBlock2D,
            ],
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: vec![2; 4],
            transformer_layers_per_block: vec![1; 4],
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: 1024,
            num_attention_heads: vec![5, 10, 20, 20],
            use_linear_projection: true,
            upcast_attention,
            sample_size,
        }
    }

    /// A two-level SD2-style UNet small enough for unit tests (linear projections, upcast).
    pub fn tiny() -> Self {
        use DownBlockType::*;
        use UpBlockType::*;
        Self {
            in_channels: 4,
            out_channels: 4,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![CrossAttnDownBlock2D, DownBlock2D],
            up_block_types: vec![UpBlock2D, CrossAttnUpBlock2D],
            block_out_channels: vec![32, 64],
            layers_per_block: vec![1, 1],
            transformer_layers_per_block: vec![1, 1],
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            norm_num_groups: 8,
            norm_eps: 1e-5,
            cross_attention_dim: 32,
            num_attention_heads: vec![2, 4],
            use_linear_projection: true,
            upcast_attention: true,
            sample_size: 16,
        }
    }

    /// Checks that the lists agree in length and channels divide into groups and heads.
    pub fn validate(&self) -> crate::Result<()> {
        let levels = self.block_out_channels.len();
        let bad = |msg: String| Err(Error::Config(msg));
        if levels == 0 {
            return bad("block_out_channels is empty".into());
        }
        for (name, len) in [
            ("down_block_types", self.down_block_types.len()),
            ("up_block_types", self.up_block_types.len()),
            ("layers_per_block", self.layers_per_block.len()),
            (
                "transformer_layers_per_block",
                self.transformer_layers_per_block.len(),
            ),
            ("num_attention_heads", self.num_attention_heads.len()),
        ] {
            if len != levels {
                return bad(format!(
                    "{name} has {len} entries but block_out_channels has {levels}"
                ));
            }
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if self.norm_num_groups == 0 || c % self.norm_num_groups != 0 {
                return bad(format!(
                    "block_out_channels[{i}] = {c} is not divisible by norm_num_groups = {}",
                    self.norm_num_groups
                ));
            }
            let heads = self.num_attention_heads[i];
            if heads == 0 || c % heads != 0 {
                return bad(format!(
                    "block_out_channels[{i}] = {c} is not divisible by {heads} attention heads"
                ));
            }
        }
        Ok(())
    }

    /// Reads a diffusers `UNet2DConditionModel` `config.json`.
    ///
    /// Missing fields take diffusers' defaults. Features this port does not implement (class
    /// embeddings, additional embeddings, other block types, activations other than SiLU) are
    /// errors naming the field rather than silently ignored.
    pub fn from_diffusers_json(path: &Path) -> crate::Result<Self> {
        let file = ConfigFile::read(path)?;
        let raw: DiffusersUNetConfig = file.deserialize()?;
        raw.into_config().map_err(|msg| file.error(&msg))
    }
}

/// An `int` or a per-block list, as diffusers accepts for several fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(usize),
    Many(Vec<usize>),
}

impl OneOrMany {
    fn expand(&self, levels: usize, field: &str) -> std::result::Result<Vec<usize>, String> {
        match self {
            OneOrMany::One(v) => Ok(vec![*v; levels]),
            OneOrMany::Many(v) if v.len() == levels => Ok(v.clone()),
            OneOrMany::Many(v) => Err(format!(
                "{field} has {} entries but there are {levels} blocks",
                v.len()
            )),
        }
    }
}

fn d_in() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_one() -> usize {
    1
}
fn d_one_f() -> f64 {
    1.0
}
fn d_groups() -> Option<usize> {
    Some(32)
}
fn d_eps() -> f64 {
    1e-5
}
fn d_cross() -> OneOrMany {
    OneOrMany::One(1280)
}
fn d_two() -> OneOrMany {
    OneOrMany::One(2)
}
fn d_head() -> OneOrMany {
    OneOrMany::One(8)
}
fn d_silu() -> String {
    "silu".into()
}
fn d_sample() -> Option<usize> {
    Some(64)
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}

/// The subset of diffusers' `UNet2DConditionModel.__init__` arguments this port reads, with
/// diffusers' defaults.
#[derive(Debug, Deserialize)]
struct DiffusersUNetConfig {
    #[serde(default = "d_sample")]
    sample_size: Option<usize>,
    #[serde(default = "d_in")]
    in_channels: usize,
    #[serde(default = "d_in")]
    out_channels: usize,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default = "d_true")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    mid_block_type: Option<String>,
    up_block_types: Vec<String>,
    #[serde(default)]
    only_cross_attention: serde_json::Value,
    block_out_channels: Vec<usize>,
    #[serde(default = "d_two")]
    layers_per_block: OneOrMany,
    #[serde(default = "d_one")]
    downsample_padding: usize,
    #[serde(default = "d_one_f")]
    mid_block_scale_factor: f64,
    #[serde(default = "d_silu")]
    act_fn: String,
    #[serde(default = "d_groups")]
    norm_num_groups: Option<usize>,
    #[serde(default = "d_eps")]
    norm_eps: f64,
    #[serde(default = "d_cross")]
    cross_attention_dim: OneOrMany,
    #[serde(default)]
    transformer_layers_per_block: Option<OneOrMany>,
    #[serde(default)]
    encoder_hid_dim: Option<usize>,
    #[serde(default = "d_head")]
    attention_head_dim: OneOrMany,
    #[serde(default)]
    num_attention_heads: Option<OneOrMany>,
    #[serde(default)]
    dual_cross_attention: bool,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default)]
    class_embed_type: Option<String>,
    #[serde(default)]
    addition_embed_type: Option<String>,
    #[serde(default)]
    num_class_embeds: Option<usize>,
    #[serde(default)]
    upcast_attention: bool,
    #[serde(default)]
    resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    time_embedding_type: Option<String>,
    #[serde(default)]
    time_embedding_dim: Option<usize>,
    #[serde(default)]
    time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    conv_in_kernel: Option<usize>,
    #[serde(default)]
    conv_out_kernel: Option<usize>,
    #[serde(default)]
    attention_type: Option<String>,
}

impl DiffusersUNetConfig {
    fn into_config(self) -> std::result::Result<UNet2DConditionConfig, String> {
        let levels = self.block_out_channels.len();
        let unsupported = |field: &str, value: &dyn std::fmt::Debug| {
            Err(format!("{field} = {value:?} is not supported by this port"))
        };
        // 1. Reject what the port does not implement, naming the field.
        if self.center_input_sample {
            return unsupported("center_input_sample", &true);
        }
        if self.dual_cross_attention {
            return unsupported("dual_cross_attention", &true);
        }
        if self.act_fn != "silu" {
            return unsupported("act_fn", &self.act_fn);
        }
        if !matches!(
            self.only_cross_attention,
            serde_json::Value::Null | serde_json::Value::Bool(false)
        ) {
            return unsupported("only_cross_attention", &self.only_cross_attention);
        }
        for (field, value) in [
            ("class_embed_type", &self.class_embed_type),
            ("addition_embed_type", &self.addition_embed_type),
        ] {
            if let Some(v) = value {
                return unsupported(field, v);
            }
        }
        if let Some(n) = self.num_class_embeds {
            return unsupported("num_class_embeds", &n);
        }
        if let Some(n) = self.encoder_hid_dim {
            return unsupported("encoder_hid_dim", &n);
        }
        if let Some(n) = self.time_cond_proj_dim {
            return unsupported("time_cond_proj_dim", &n);
        }
        if let Some(n) = self.time_embedding_dim {
            return unsupported("time_embedding_dim", &n);
        }
        for (field, value, ok) in [
            (
                "resnet_time_scale_shift",
                &self.resnet_time_scale_shift,
                "default",
            ),
            (
                "time_embedding_type",
                &self.time_embedding_type,
                "positional",
            ),
            ("attention_type", &self.attention_type, "default"),
            (
                "mid_block_type",
                &self.mid_block_type,
                "UNetMidBlock2DCrossAttn",
            ),
        ] {
            if let Some(v) = value
                && v != ok
            {
                return unsupported(field, v);
            }
        }
        if self.mid_block_type.is_none() {
            return unsupported("mid_block_type", &"null");
        }
        for (field, value) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if let Some(k) = value
                && k != 3
            {
                return unsupported(field, &k);
            }
        }
        // 2. Block types.
        let down_block_types = self
            .down_block_types
            .iter()
            .map(|t| match t.as_str() {
                "CrossAttnDownBlock2D" => Ok(DownBlockType::CrossAttnDownBlock2D),
                "DownBlock2D" => Ok(DownBlockType::DownBlock2D),
                other => Err(format!("down_block_types entry {other:?} is not supported")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let up_block_types = self
            .up_block_types
            .iter()
            .map(|t| match t.as_str() {
                "CrossAttnUpBlock2D" => Ok(UpBlockType::CrossAttnUpBlock2D),
                "UpBlock2D" => Ok(UpBlockType::UpBlock2D),
                other => Err(format!("up_block_types entry {other:?} is not supported")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // 3. Cross-attention width must be one value.
        let cross = self
            .cross_attention_dim
            .expand(levels, "cross_attention_dim")?;
        if cross.iter().any(|&c| c != cross[0]) {
            return unsupported("cross_attention_dim", &cross);
        }
        // 4. diffusers' naming quirk: SD configs put head *counts* in `attention_head_dim`
        //    (diffusers then uses `num_attention_heads = num_attention_heads or
        //    attention_head_dim`). This is the only place where that translation happens.
        let heads = match &self.num_attention_heads {
            Some(h) => h.expand(levels, "num_attention_heads")?,
            None => self
                .attention_head_dim
                .expand(levels, "attention_head_dim")?,
        };
        let config = UNet2DConditionConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            down_block_types,
            up_block_types,
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block.expand(levels, "layers_per_block")?,
            transformer_layers_per_block: self
                .transformer_layers_per_block
                .unwrap_or(OneOrMany::One(1))
                .expand(levels, "transformer_layers_per_block")?,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: self
                .norm_num_groups
                .ok_or_else(|| "norm_num_groups = null is not supported".to_string())?,
            norm_eps: self.norm_eps,
            cross_attention_dim: cross[0],
            num_attention_heads: heads,
            use_linear_projection: self.use_linear_projection,
            upcast_attention: self.upcast_attention,
            sample_size: self.sample_size.unwrap_or(64),
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}
