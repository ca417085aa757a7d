//! [`LoraConfig`]: rank, alpha, dropout and the projections that get adapters, with PEFT's
//! `target_modules` matching (a name matches a module whose path ends with it).

use burn::config::Config;

use crate::error::Error;

/// Which projections get LoRA adapters, and their shape and scale (PEFT's `LoraConfig`).
///
/// `target_modules` are diffusers module-path patterns matched segment-wise against the end of
/// a projection's path: `"to_q"` matches every `...attn1.to_q` and `...attn2.to_q`,
/// `"attn2.to_k"` only cross-attention keys, `"to_out.0"` the output projections, and a full
/// path matches itself. `*` stands for exactly one segment
/// (`"down_blocks.*.attentions.*.transformer_blocks.*.attn2.to_v"`). Only attention
/// projections carry adapters (`to_q`, `to_k`, `to_v`, `to_out.0`, and in the MMDiT also
/// `add_q_proj`, `add_k_proj`, `add_v_proj`, `to_add_out`; in the CLIP text encoders
/// `q_proj`, `k_proj`, `v_proj`, `out_proj`); a pattern that matches none of
/// them is an error, so typos such as `"to_out"` (diffusers' `ModuleList`) do not pass
/// silently.
#[derive(Config, Debug)]
pub struct LoraConfig {
    /// Module-path patterns of the projections to adapt (see the type's docs).
    pub target_modules: Vec<String>,
    /// Adapter rank `r` (PEFT `r`).
    #[config(default = 4)]
    pub rank: usize,
    /// Scaling numerator (PEFT `lora_alpha`); the adapter's output is multiplied by
    /// `alpha / rank`. `None` means `alpha = rank` (scale 1, diffusers' convention).
    #[config(default = "None")]
    pub alpha: Option<f64>,
    /// Dropout probability on the adapter's input (PEFT `lora_dropout`), training only.
    #[config(default = 0.0)]
    pub dropout: f64,
}

/// The attention projections of SD 1.x/2.x UNets (`attn1` and `attn2`).
const UNET_TARGETS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

/// The self-attention projections of the CLIP text encoders.
const CLIP_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "out_proj"];

/// The text-stream projections of the MMDiT's joint attention.
const MMDIT_EXTRA_TARGETS: [&str; 4] = ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"];

impl LoraConfig {
    /// The UNet's attention projections: `to_q`, `to_k`, `to_v`, `to_out.0` of `attn1` and
    /// `attn2` (diffusers' `train_text_to_image_lora.py` targets), rank 4, scale 1.
    pub fn unet_default() -> Self {
        Self::new(UNET_TARGETS.iter().map(|s| s.to_string()).collect())
    }

    /// The MMDiT's attention projections: the UNet's four plus `add_q_proj`, `add_k_proj`,
    /// `add_v_proj`, `to_add_out`, rank 4, scale 1.
    pub fn mmdit_default() -> Self {
        Self::new(
            UNET_TARGETS
                .iter()
                .chain(&MMDIT_EXTRA_TARGETS)
                .map(|s| s.to_string())
                .collect(),
        )
    }

    /// The CLIP text encoders' self-attention projections: `q_proj`, `k_proj`, `v_proj`,
    /// `out_proj` of every layer (the `text_lora_config` targets of diffusers'
    /// `train_dreambooth_lora.py`), rank 4, scale 1.
    pub fn clip_default() -> Self {
        Self::new(CLIP_TARGETS.iter().map(|s| s.to_string()).collect())
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64) / self.rank as f64
    }

    /// Checks rank, alpha, dropout and the patterns, naming the offending field.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.rank == 0 {
            return bad("lora rank must be at least 1".into());
        }
        if let Some(alpha) = self.alpha
            && !(alpha.is_finite() && alpha > 0.0)
        {
            return bad(format!(
                "lora alpha must be positive and finite, got {alpha}"
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!(
                "lora dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        if self.target_modules.is_empty() {
            return bad("lora target_modules is empty".into());
        }
        for pattern in &self.target_modules {
            if pattern.is_empty() || pattern.split('.').any(str::is_empty) {
                return bad(format!(
                    "lora target module pattern {pattern:?} is malformed"
                ));
            }
        }
        Ok(())
    }

    /// Whether any pattern matches the projection at diffusers path `path`.
    pub fn matches(&self, path: &str) -> bool {
        self.target_modules.iter().any(|p| pattern_matches(p, path))
    }
}

/// Whether `pattern` matches the end of `path`, segment by segment (`*` is any one segment).
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let path: Vec<&str> = path.split('.').collect();
    pattern.len() <= path.len()
        && pattern
            .iter()
            .rev()
            .zip(path.iter().rev())
            .all(|(p, s)| *p == "*" || p == s)
}
