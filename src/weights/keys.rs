//! The rules between our module paths and diffusers state-dict keys.
//!
//! Struct fields carry diffusers' segment names, so only four rules remain:
//! 1. burn's norm parameters `gamma`/`beta` are diffusers' `weight`/`bias`;
//! 2. a `FeedForward`'s `proj_in` is `net.0.proj` (the activation module owns the projection
//!    in diffusers) and its `proj_out` is `net.2` (`net.1` is a parameter-free dropout);
//! 3. enum variant names (`Projection::Linear` / `Conv`) never appear in paths;
//! 4. an attention projection is a [`LoraLinear`](crate::lora::LoraLinear): the `base` segment
//!    directly under it disappears (`attn1.to_q.base.weight` is `attn1.to_q.weight`) and its
//!    adapters `lora_a`/`lora_b` are PEFT's `lora_A`/`lora_B` (`attn1.to_q.lora_A.weight`). The
//!    rule applies only to a segment right before the tensor name, under one of
//!    [`LORA_PROJECTIONS`] (diffusers' attention projections and the CLIP text encoders'
//!    `q_proj`, `k_proj`, `v_proj`, `out_proj`); other `base` segments are kept.
//!
//! `to_out.0`, `downsamplers.0` and the like come from one-element `Vec`s and need no rule.
//!
//! One rule reads the file's side: checkpoints saved before diffusers 0.14 name the VAE
//! mid-block attention `query`/`key`/`value`/`proj_attn`; [`legacy_attention_key`] gives the
//! current `to_q`/`to_k`/`to_v`/`to_out.0`, as diffusers' own loader converts them.

/// The projections that are [`LoraLinear`](crate::lora::LoraLinear)s, as trailing path
/// segments (`to_out.0` is two).
pub const LORA_PROJECTIONS: [&str; 12] = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
];

/// Whether `segments` (a module path) ends with one of [`LORA_PROJECTIONS`].
fn is_lora_projection(segments: &[&str]) -> bool {
    LORA_PROJECTIONS.iter().any(|p| {
        let p: Vec<&str> = p.split('.').collect();
        segments.len() >= p.len() && segments[segments.len() - p.len()..] == p[..]
    })
}

/// Whether `path` (ours, e.g. `...attn2.to_k.lora_a.weight`) is a LoRA adapter parameter,
/// which diffusers base checkpoints do not hold.
pub fn is_adapter_path(path: &str) -> bool {
    let segments: Vec<&str> = path.split('.').collect();
    let n = segments.len();
    n >= 3
        && matches!(segments[n - 2], "lora_a" | "lora_b")
        && is_lora_projection(&segments[..n - 2])
}

/// Translates a burn module path (enum variants skipped) into the diffusers key.
pub fn to_diffusers_key(path: &str) -> String {
    let mut segments: Vec<&str> = path.split('.').collect();
    // Rule 4: the LoraLinear segment right before the tensor name.
    let n = segments.len();
    if n >= 3 && is_lora_projection(&segments[..n - 2]) {
        match segments[n - 2] {
            "base" => {
                segments.remove(n - 2);
            }
            "lora_a" => segments[n - 2] = "lora_A",
            "lora_b" => segments[n - 2] = "lora_B",
            _ => {}
        }
    }
    if let Some(last) = segments.last_mut() {
        *last = match *last {
            "gamma" => "weight",
            "beta" => "bias",
            other => other,
        };
    }
    let mut out: Vec<&str> = Vec::with_capacity(segments.len() + 2);
    for (i, seg) in segments.iter().enumerate() {
        let in_ff = i > 0 && matches!(segments[i - 1], "ff" | "ff_context");
        match (*seg, in_ff) {
            ("proj_in", true) => out.extend(["net", "0", "proj"]),
            ("proj_out", true) => out.extend(["net", "2"]),
            (s, _) => out.push(s),
        }
    }
    out.join(".")
}

/// The current name of a file key in the pre-0.14 attention-block layout
/// (`<...>.attentions.<i>.query.weight` is `<...>.attentions.<i>.to_q.weight`; likewise `key`,
/// `value`, and `proj_attn` to `to_out.0`), or `None` for any other key.
pub fn legacy_attention_key(key: &str) -> Option<String> {
    let segments: Vec<&str> = key.split('.').collect();
    let n = segments.len();
    if n < 4
        || segments[n - 4] != "attentions"
        || segments[n - 3].parse::<usize>().is_err()
        || !matches!(segments[n - 1], "weight" | "bias")
    {
        return None;
    }
    let current = match segments[n - 2] {
        "query" => "to_q",
        "key" => "to_k",
        "value" => "to_v",
        "proj_attn" => "to_out.0",
        _ => return None,
    };
    Some(format!(
        "{}.{current}.{}",
        segments[..n - 2].join("."),
        segments[n - 1]
    ))
}

#[cfg(test)]
mod tests {
    use super::to_diffusers_key;

    #[test]
    fn legacy_attention_names() {
        use super::legacy_attention_key as rule;
        assert_eq!(
            rule("encoder.mid_block.attentions.0.query.weight").as_deref(),
            Some("encoder.mid_block.attentions.0.to_q.weight")
        );
        assert_eq!(
            rule("decoder.mid_block.attentions.0.proj_attn.bias").as_deref(),
            Some("decoder.mid_block.attentions.0.to_out.0.bias")
        );
        for kept in [
            "encoder.mid_block.attentions.0.to_k.weight",
            "mid_block.attentions.0.transformer_blocks.0.attn1.key.weight",
            "encoder.mid_block.attentions.x.value.weight",
            "attentions.0.value.scale",
            "value.weight",
        ] {
            assert_eq!(rule(kept), None, "{kept}");
        }
    }

    #[test]
    fn rules() {
        assert_eq!(
            to_diffusers_key("down_blocks.0.attentions.1.transformer_blocks.0.ff.proj_in.weight"),
            "down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight"
        );
        assert_eq!(
            to_diffusers_key("transformer_blocks.3.ff_context.proj_out.bias"),
            "transformer_blocks.3.ff_context.net.2.bias"
        );
        assert_eq!(
            to_diffusers_key("down_blocks.0.attentions.1.proj_in.weight"),
            "down_blocks.0.attentions.1.proj_in.weight"
        );
        assert_eq!(
            to_diffusers_key("conv_norm_out.gamma"),
            "conv_norm_out.weight"
        );
        assert_eq!(
            to_diffusers_key("mid_block.attentions.0.transformer_blocks.0.norm3.beta"),
            "mid_block.attentions.0.transformer_blocks.0.norm3.bias"
        );
        assert_eq!(
            to_diffusers_key("up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.weight"),
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.weight"
        );
    }

    #[test]
    fn lora_linear_rule_is_confined_to_attention_projections() {
        let cases = [
            (
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.base.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.base.bias",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.bias",
            ),
            (
                "transformer_blocks.2.attn.add_k_proj.base.weight",
                "transformer_blocks.2.attn.add_k_proj.weight",
            ),
            (
                "transformer_blocks.0.attn.to_add_out.lora_a.weight",
                "transformer_blocks.0.attn.to_add_out.lora_A.weight",
            ),
            (
                "transformer_blocks.0.attn2.to_v.lora_b.weight",
                "transformer_blocks.0.attn2.to_v.lora_B.weight",
            ),
            // Not directly under a LoRA projection, or not right before the tensor name: kept.
            (
                "down_blocks.0.attentions.0.proj_in.base.weight",
                "down_blocks.0.attentions.0.proj_in.base.weight",
            ),
            ("attn1.to_out.1.base.weight", "attn1.to_out.1.base.weight"),
            (
                "text_model.encoder.layers.3.self_attn.out_proj.base.bias",
                "text_model.encoder.layers.3.self_attn.out_proj.bias",
            ),
            (
                "text_model.encoder.layers.0.self_attn.q_proj.lora_a.weight",
                "text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
            ),
            (
                "attn1.to_q.base.inner.weight",
                "attn1.to_q.base.inner.weight",
            ),
            ("to_q_extra.base.weight", "to_q_extra.base.weight"),
            ("base.weight", "base.weight"),
            ("norm.lora_a.weight", "norm.lora_a.weight"),
        ];
        for (ours, theirs) in cases {
            assert_eq!(to_diffusers_key(ours), theirs, "{ours}");
        }
    }

    #[test]
    fn adapter_paths() {
        use super::is_adapter_path;
        assert!(is_adapter_path("a.attn1.to_q.lora_a.weight"));
        assert!(is_adapter_path("a.attn.to_out.0.lora_b.weight"));
        assert!(!is_adapter_path("a.attn1.to_q.base.weight"));
        assert!(!is_adapter_path("a.ff.proj_in.lora_a.weight"));
        assert!(!is_adapter_path("lora_a.weight"));
    }
}
