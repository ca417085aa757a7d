//! The T5 encoder: transformers' `T5EncoderModel` (SD 3's `text_encoder_3`, T5 v1.1 XXL),
//! ported from `transformers/models/t5/modeling_t5.py` (5.24). Module paths equal the
//! checkpoint keys (`encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight`,
//! `encoder.block.N.layer.1.DenseReluDense.wi_0.weight`, `shared.weight`).

mod config;
mod model;

pub use config::{T5Activation, T5Config};
pub use model::{
    T5Attention, T5Block, T5DenseFF, T5EncoderModel, T5Layer, T5LayerFF, T5LayerSelfAttention,
    T5Stack, relative_position_bucket,
};
