//! [`LoraTarget`]: walking every LoRA-capable projection of a model with its diffusers path.

use burn::module::Module;
use burn::tensor::backend::Backend;

use super::LoraLinear;
use crate::attention::Attention;
use crate::mmdit::{JointAttention, SD3Transformer2DModel};
use crate::text::clip::{ClipAttention, ClipTextTransformer};
use crate::text::{ClipTextModel, ClipTextModelWithProjection};
use crate::unet::{Transformer2DModel, UNet2DConditionModel};

/// A model whose attention projections are [`LoraLinear`]s.
///
/// Paths are diffusers module paths (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`,
/// `transformer_blocks.3.attn.add_k_proj`, `...attn2.to_out.0`), in forward order.
pub trait LoraTarget<B: Backend>: Module<B> {
    /// The key prefix `pipe.load_lora_weights()` expects for this model's adapters, dot
    /// included: `"unet."` for SD 1.x/2.x (`StableDiffusionLoraLoaderMixin.unet_name`),
    /// `"transformer."` for SD 3 (`SD3LoraLoaderMixin.transformer_name`).
    const PEFT_PREFIX: &'static str;

    /// Rebuilds every LoRA-capable projection as `f(path, layer)`.
    fn map_lora(self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self;

    /// Calls `f(path, layer)` on every LoRA-capable projection.
    fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>));
}

impl<B: Backend> Attention<B> {
    /// Applies `f` to `to_q`, `to_k`, `to_v` and `to_out.0` with their diffusers paths.
    pub fn map_lora(self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        let p = self.site.path();
        Self {
            to_q: f(&format!("{p}.to_q"), self.to_q),
            to_k: f(&format!("{p}.to_k"), self.to_k),
            to_v: f(&format!("{p}.to_v"), self.to_v),
            to_out: map_list(&format!("{p}.to_out"), self.to_out, f),
            ..self
        }
    }

    /// Calls `f` on `to_q`, `to_k`, `to_v` and `to_out.0` with their diffusers paths.
    pub fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        let p = self.site.path();
        f(&format!("{p}.to_q"), &self.to_q);
        f(&format!("{p}.to_k"), &self.to_k);
        f(&format!("{p}.to_v"), &self.to_v);
        for (i, layer) in self.to_out.iter().enumerate() {
            f(&format!("{p}.to_out.{i}"), layer);
        }
    }
}

impl<B: Backend> JointAttention<B> {
    /// Applies `f` to every projection of both streams with its diffusers path.
    pub fn map_lora(self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        let p = self.site.path();
        Self {
            to_q: f(&format!("{p}.to_q"), self.to_q),
            to_k: f(&format!("{p}.to_k"), self.to_k),
            to_v: f(&format!("{p}.to_v"), self.to_v),
            add_q_proj: f(&format!("{p}.add_q_proj"), self.add_q_proj),
            add_k_proj: f(&format!("{p}.add_k_proj"), self.add_k_proj),
            add_v_proj: f(&format!("{p}.add_v_proj"), self.add_v_proj),
            to_out: map_list(&format!("{p}.to_out"), self.to_out, f),
            to_add_out: self.to_add_out.map(|l| f(&format!("{p}.to_add_out"), l)),
            ..self
        }
    }

    /// Calls `f` on every projection of both streams with its diffusers path.
    pub fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        let p = self.site.path();
        f(&format!("{p}.to_q"), &self.to_q);
        f(&format!("{p}.to_k"), &self.to_k);
        f(&format!("{p}.to_v"), &self.to_v);
        f(&format!("{p}.add_q_proj"), &self.add_q_proj);
        f(&format!("{p}.add_k_proj"), &self.add_k_proj);
        f(&format!("{p}.add_v_proj"), &self.add_v_proj);
        for (i, layer) in self.to_out.iter().enumerate() {
            f(&format!("{p}.to_out.{i}"), layer);
        }
        if let Some(layer) = &self.to_add_out {
            f(&format!("{p}.to_add_out"), layer);
        }
    }
}

fn map_list<B: Backend>(
    prefix: &str,
    layers: Vec<LoraLinear<B>>,
    f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>,
) -> Vec<LoraLinear<B>> {
    layers
        .into_iter()
        .enumerate()
        .map(|(i, layer)| f(&format!("{prefix}.{i}"), layer))
        .collect()
}

/// `attn1` and `attn2` of every block of every transformer in `list`.
fn map_transformers<B: Backend>(
    list: Vec<Transformer2DModel<B>>,
    f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>,
) -> Vec<Transformer2DModel<B>> {
    let mut out = Vec::with_capacity(list.len());
    for mut transformer in list {
        let mut blocks = Vec::with_capacity(transformer.transformer_blocks.len());
        for mut block in transformer.transformer_blocks {
            block.attn1 = block.attn1.map_lora(f);
            block.attn2 = block.attn2.map_lora(f);
            blocks.push(block);
        }
        transformer.transformer_blocks = blocks;
        out.push(transformer);
    }
    out
}

fn visit_transformers<B: Backend>(
    list: &[Transformer2DModel<B>],
    f: &mut impl FnMut(&str, &LoraLinear<B>),
) {
    for block in list.iter().flat_map(|t| &t.transformer_blocks) {
        block.attn1.visit_lora(f);
        block.attn2.visit_lora(f);
    }
}

impl<B: Backend> LoraTarget<B> for UNet2DConditionModel<B> {
    const PEFT_PREFIX: &'static str = "unet.";

    fn map_lora(mut self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        let mut down = Vec::with_capacity(self.down_blocks.len());
        for mut block in self.down_blocks {
            block.attentions = map_transformers(block.attentions, f);
            down.push(block);
        }
        self.down_blocks = down;
        self.mid_block.attentions = map_transformers(self.mid_block.attentions, f);
        let mut up = Vec::with_capacity(self.up_blocks.len());
        for mut block in self.up_blocks {
            block.attentions = map_transformers(block.attentions, f);
            up.push(block);
        }
        self.up_blocks = up;
        self
    }

    fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        for block in &self.down_blocks {
            visit_transformers(&block.attentions, f);
        }
        visit_transformers(&self.mid_block.attentions, f);
        for block in &self.up_blocks {
            visit_transformers(&block.attentions, f);
        }
    }
}

impl<B: Backend> LoraTarget<B> for SD3Transformer2DModel<B> {
    const PEFT_PREFIX: &'static str = "transformer.";

    fn map_lora(mut self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        let mut blocks = Vec::with_capacity(self.transformer_blocks.len());
        for mut block in self.transformer_blocks {
            block.attn = block.attn.map_lora(f);
            block.attn2 = block.attn2.map(|a| a.map_lora(f));
            blocks.push(block);
        }
        self.transformer_blocks = blocks;
        self
    }

    fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        for block in &self.transformer_blocks {
            block.attn.visit_lora(f);
            if let Some(attn2) = &block.attn2 {
                attn2.visit_lora(f);
            }
        }
    }
}

/// Self-attention projections, with the PEFT names diffusers' text-encoder LoRAs use
/// (`text_model.encoder.layers.0.self_attn.q_proj`); prefix `text_encoder.`
/// (`StableDiffusionLoraLoaderMixin.text_encoder_name`).
impl<B: Backend> LoraTarget<B> for ClipTextModel<B> {
    const PEFT_PREFIX: &'static str = "text_encoder.";

    fn map_lora(self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        Self {
            text_model: self.text_model.map_lora(f),
        }
    }

    fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        self.text_model.visit_lora(f);
    }
}

/// As for [`ClipTextModel`]. The prefix is SD 3's CLIP-L one (`text_encoder.`); pass
/// `"text_encoder_2."` to [`export_peft`](crate::lora::export_peft) for CLIP-G.
impl<B: Backend> LoraTarget<B> for ClipTextModelWithProjection<B> {
    const PEFT_PREFIX: &'static str = "text_encoder.";

    fn map_lora(self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        Self {
            text_model: self.text_model.map_lora(f),
            text_projection: self.text_projection,
        }
    }

    fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        self.text_model.visit_lora(f);
    }
}

impl<B: Backend> ClipTextTransformer<B> {
    fn map_lora(mut self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        let mut layers = Vec::with_capacity(self.encoder.layers.len());
        for (i, mut layer) in self.encoder.layers.into_iter().enumerate() {
            let p = format!("text_model.encoder.layers.{i}.self_attn");
            let a = layer.self_attn;
            layer.self_attn = ClipAttention {
                q_proj: f(&format!("{p}.q_proj"), a.q_proj),
                k_proj: f(&format!("{p}.k_proj"), a.k_proj),
                v_proj: f(&format!("{p}.v_proj"), a.v_proj),
                out_proj: f(&format!("{p}.out_proj"), a.out_proj),
                ..a
            };
            layers.push(layer);
        }
        self.encoder.layers = layers;
        self
    }

    fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            let p = format!("text_model.encoder.layers.{i}.self_attn");
            let a = &layer.self_attn;
            f(&format!("{p}.q_proj"), &a.q_proj);
            f(&format!("{p}.k_proj"), &a.k_proj);
            f(&format!("{p}.v_proj"), &a.v_proj);
            f(&format!("{p}.out_proj"), &a.out_proj);
        }
    }
}
