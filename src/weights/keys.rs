//! The rules between our module paths and diffusers state-dict keys.
//!
//! Struct fields carry diffusers' segment names, so only three rules remain:
//! 1. burn's norm parameters `gamma`/`beta` are diffusers' `weight`/`bias`;
//! 2. a `FeedForward`'s `proj_in` is `net.0.proj` (the activation module owns the projection
//!    in diffusers) and its `proj_out` is `net.2` (`net.1` is a parameter-free dropout);
//! 3. enum variant names (`Projection::Linear` / `Conv`) never appear in paths.
//!
//! `to_out.0`, `downsamplers.0` and the like come from one-element `Vec`s and need no rule.

/// Translates a burn module path (enum variants skipped) into the diffusers key.
pub fn to_diffusers_key(path: &str) -> String {
    let mut segments: Vec<&str> = path.split('.').collect();
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

#[cfg(test)]
mod tests {
    use super::to_diffusers_key;

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
}
