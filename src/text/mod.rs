//! The text side of the SD 2.1 and SD 3 pipelines, ported from transformers, and the
//! conditioning diffusers assembles from it:
//!
//! - [`tokenizer`]: CLIP's BPE tokenizer (`tokenizer/`, SD 3's `tokenizer_2/`) and T5's
//!   sentencepiece tokenizer (SD 3's `tokenizer_3/`), read from the folders diffusers
//!   pipelines load, with each token's span in the caption for exact noun positions;
//! - [`clip`]: `CLIPTextModel` (SD 2.1's OpenCLIP ViT-H text tower) and
//!   `CLIPTextModelWithProjection` (SD 3's CLIP-L and CLIP-G), with LoRA-capable
//!   self-attention projections;
//! - [`t5`]: `T5EncoderModel` (SD 3's T5 v1.1 XXL);
//! - [`sd3`]: SD 2.1's and SD 3's prompt embeddings from the encoders' outputs;
//! - [`load_transformers`]: loading a transformers `model.safetensors` folder by key name.
//!
//! Token ids come in as `Tensor<B, 2, Int>` `[batch, seq]`.

pub mod clip;
mod load;
pub mod sd3;
pub mod t5;
pub mod tokenizer;

pub use clip::{ClipTextConfig, ClipTextModel, ClipTextModelWithProjection, ClipTextOutput};
pub use load::{TransformersModel, load_transformers, load_transformers_files};
pub use sd3::{
    Sd3PromptEmbeds, Sd3TextEncoders, Sd3TokenIds, sd3_prompt_embeds, sd21_prompt_embeds, t5_zeros,
};
pub use t5::{T5Config, T5EncoderModel};
pub use tokenizer::{
    CLIP_MAX_LENGTH, ClipTokenizer, Encoding, SD3_T5_MAX_LENGTH, T5Tokenizer, T5WordTokens,
};
