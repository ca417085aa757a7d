//! Integration tests, in one binary so the backends are compiled once.

mod attention_grad;
mod bad_captions;
mod common;
mod ctcal_parity;
mod embedded_default;
mod full_size;
mod fuzz;
mod lora_parity;
mod mmdit_naming;
mod mmdit_parity;
mod pipeline_parity;
mod sampler_parity;
mod schedule_parity;
mod tagger_agreement;
mod teacher_levels;
mod text_loading;
mod text_naming;
mod text_parity;
mod tokenizer_parity;
mod train_resume;
mod trainer_api;
mod unet_naming;
mod unet_parity;
mod vae_naming;
mod vae_parity;
mod weights_errors;
