//! [`T5Config`]: the T5 encoder's architecture with transformers' `T5Config` field names, the
//! SD 3 preset (T5 v1.1 XXL) and reading a transformers `config.json`.

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::config::ConfigFile;

/// The feed-forward activation `feed_forward_proj` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum T5Activation {
    /// `relu` (original T5).
    Relu,
    /// Exact (erf) GELU (`"gelu"`, `"gated-gelu"` is not this one).
    Gelu,
    /// Tanh-approximated GELU (`gelu_new`), what `"gated-gelu"` means (T5 v1.1).
    GeluNew,
}

/// Architecture of a [`T5EncoderModel`](super::T5EncoderModel), field for field transformers'
/// `T5Config` (defaults are transformers' defaults, i.e. t5-small).
#[derive(Config, Debug, PartialEq)]
pub struct T5Config {
    /// Token vocabulary size (rows of `shared`).
    #[config(default = 32128)]
    pub vocab_size: usize,
    /// Model width.
    #[config(default = 512)]
    pub d_model: usize,
    /// Width of one attention head (`num_heads * d_kv` need not equal `d_model`).
    #[config(default = 64)]
    pub d_kv: usize,
    /// Width of the feed-forward hidden layer.
    #[config(default = 2048)]
    pub d_ff: usize,
    /// Number of encoder blocks.
    #[config(default = 6)]
    pub num_layers: usize,
    /// Attention heads per block.
    #[config(default = 8)]
    pub num_heads: usize,
    /// Buckets of the relative position bias (half per direction in the encoder).
    #[config(default = 32)]
    pub relative_attention_num_buckets: usize,
    /// Distance from which all relative positions share the last bucket.
    #[config(default = 128)]
    pub relative_attention_max_distance: usize,
    /// Epsilon of the RMS norms.
    #[config(default = 1e-6)]
    pub layer_norm_epsilon: f64,
    /// `"{act}"` or `"gated-{act}"` with `act` one of `relu`, `gelu`, `gelu_new`;
    /// `"gated-gelu"` means the tanh GELU (transformers' backward-compatible alias).
    #[config(default = "String::from(\"relu\")")]
    pub feed_forward_proj: String,
}

impl T5Config {
    /// SD 3's `text_encoder_3`, the encoder of Google's T5 v1.1 XXL, as
    /// `stabilityai/stable-diffusion-3-medium-diffusers/text_encoder_3/config.json` gives it.
    pub fn sd3_t5_xxl() -> Self {
        Self::new()
            .with_d_model(4096)
            .with_d_kv(64)
            .with_d_ff(10240)
            .with_num_layers(24)
            .with_num_heads(64)
            .with_feed_forward_proj("gated-gelu".into())
    }

    /// A tiny T5 v1.1-shaped encoder for tests (the `text_t5` fixture): width 64, heads of 8
    /// (4 heads, so the attention is narrower than the model), 2 blocks, gated GELU.
    pub fn tiny() -> Self {
        Self::new()
            .with_vocab_size(128)
            .with_d_model(64)
            .with_d_kv(8)
            .with_d_ff(80)
            .with_num_layers(2)
            .with_num_heads(4)
            .with_feed_forward_proj("gated-gelu".into())
    }

    /// Whether the feed-forward is gated (`wi_0`, `wi_1`) and its activation, from
    /// `feed_forward_proj` as transformers' `T5Config.__post_init__` reads it.
    pub fn feed_forward(&self) -> crate::Result<(bool, T5Activation)> {
        let (gated, act) = match self.feed_forward_proj.split_once('-') {
            Some(("gated", act)) => (true, act),
            None => (false, self.feed_forward_proj.as_str()),
            Some(_) => (false, ""), // Only `gated-` may prefix the activation.
        };
        let act = match (gated, act) {
            (_, "relu") => T5Activation::Relu,
            (true, "gelu") | (_, "gelu_new") => T5Activation::GeluNew,
            (false, "gelu") => T5Activation::Gelu,
            _ => {
                return Err(crate::Error::Config(format!(
                    "T5 config: feed_forward_proj {:?} is not supported (relu, gelu, gelu_new, \
                     optionally with a gated- prefix)",
                    self.feed_forward_proj
                )));
            }
        };
        Ok((gated, act))
    }

    /// Reads a transformers `config.json` (`T5Config`, e.g. `text_encoder_3/config.json`).
    ///
    /// Reads the fields of this struct, missing ones taking transformers' defaults; a field
    /// of the wrong type is an error naming it. Other fields are ignored (see [`ConfigFile`]),
    /// except `is_decoder: true`, which asks for a causal decoder stack.
    pub fn from_transformers_json(path: &Path) -> crate::Result<Self> {
        let json = ConfigFile::read(path)?;
        let d = Self::new();
        let config = Self {
            vocab_size: json.get("vocab_size", d.vocab_size)?,
            d_model: json.get("d_model", d.d_model)?,
            d_kv: json.get("d_kv", d.d_kv)?,
            d_ff: json.get("d_ff", d.d_ff)?,
            num_layers: json.get("num_layers", d.num_layers)?,
            num_heads: json.get("num_heads", d.num_heads)?,
            relative_attention_num_buckets: json.get(
                "relative_attention_num_buckets",
                d.relative_attention_num_buckets,
            )?,
            relative_attention_max_distance: json.get(
                "relative_attention_max_distance",
                d.relative_attention_max_distance,
            )?,
            layer_norm_epsilon: json.get("layer_norm_epsilon", d.layer_norm_epsilon)?,
            feed_forward_proj: json.get("feed_forward_proj", d.feed_forward_proj)?,
        };
        if json.get("is_decoder", false)? {
            return Err(json.error("is_decoder = true: only the encoder stack is supported"));
        }
        config.validate().map_err(|e| json.error(&e.to_string()))?;
        Ok(config)
    }

    /// Checks positive sizes, an even bucket count of at least 4 and the feed-forward kind.
    pub fn validate(&self) -> crate::Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(crate::Error::Config(format!(
                "T5 config: {name} must be positive"
            )));
        }
        if self.relative_attention_num_buckets < 4
            || !self.relative_attention_num_buckets.is_multiple_of(2)
        {
            return Err(crate::Error::Config(format!(
                "T5 config: relative_attention_num_buckets must be even and at least 4, got {}",
                self.relative_attention_num_buckets
            )));
        }
        self.feed_forward().map(|_| ())
    }
}
