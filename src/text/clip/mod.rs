//! CLIP text encoders: transformers' `CLIPTextModel` (SD 1.x/2.x `text_encoder`) and
//! `CLIPTextModelWithProjection` (SD 3's `text_encoder` and `text_encoder_2`), ported from
//! `transformers/models/clip/modeling_clip.py` (5.24).
//!
//! Module paths follow the published checkpoints' keys (`text_model.embeddings.
//! token_embedding.weight`, `text_model.encoder.layers.N.self_attn.q_proj.weight`,
//! `text_projection.weight`), i.e. transformers 4.x's layout, which is also what
//! transformers 5 writes for `CLIPTextModelWithProjection`; transformers 5 writes
//! `CLIPTextModel` without the `text_model.` prefix, and
//! [`load_transformers`](crate::text::load_transformers) adds it back.

mod config;
mod model;

pub use config::{ClipActivation, ClipTextConfig};
pub use model::{
    ClipAttention, ClipEncoder, ClipEncoderLayer, ClipMlp, ClipTextEmbeddings, ClipTextOutput,
    ClipTextTransformer,
};

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Int, Tensor, backend::Backend};

use crate::error::Result;

/// transformers' `CLIPTextModel`: the text tower without projection (SD 2.1's text encoder).
#[derive(Module, Debug)]
pub struct ClipTextModel<B: Backend> {
    /// The tower.
    pub text_model: ClipTextTransformer<B>,
}

/// transformers' `CLIPTextModelWithProjection`: the tower plus a bias-free projection of the
/// pooled output (SD 3's CLIP-L and CLIP-G).
#[derive(Module, Debug)]
pub struct ClipTextModelWithProjection<B: Backend> {
    /// The tower.
    pub text_model: ClipTextTransformer<B>,
    /// `hidden_size -> projection_dim`, no bias.
    pub text_projection: Linear<B>,
}

impl ClipTextConfig {
    /// Builds a [`ClipTextModel`] with burn's default initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipTextModel<B> {
        ClipTextModel {
            text_model: self.init_transformer(device),
        }
    }

    /// Builds a [`ClipTextModelWithProjection`] with burn's default initialisation.
    pub fn init_with_projection<B: Backend>(
        &self,
        device: &B::Device,
    ) -> ClipTextModelWithProjection<B> {
        ClipTextModelWithProjection {
            text_model: self.init_transformer(device),
            text_projection: LinearConfig::new(self.hidden_size, self.projection_dim)
                .with_bias(false)
                .init(device),
        }
    }
}

impl<B: crate::backend::KernelBackend> ClipTextModel<B> {
    /// See [`ClipTextTransformer::forward`]; `text_embeds` is `None`.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        output_hidden_states: bool,
    ) -> Result<ClipTextOutput<B>> {
        self.text_model.forward(input_ids, output_hidden_states)
    }
}

impl<B: crate::backend::KernelBackend> ClipTextModelWithProjection<B> {
    /// See [`ClipTextTransformer::forward`]; adds `text_embeds = text_projection(pooler_output)`.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        output_hidden_states: bool,
    ) -> Result<ClipTextOutput<B>> {
        let mut out = self.text_model.forward(input_ids, output_hidden_states)?;
        out.text_embeds = Some(self.text_projection.forward(out.pooler_output.clone()));
        Ok(out)
    }
}
