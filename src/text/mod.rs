//! The text side of the SD 2.1 and SD 3 pipelines.
//!
//! - [`tokenizer`]: CLIP's BPE tokenizer (`tokenizer/`, SD 3's `tokenizer_2/`) and T5's
//!   sentencepiece tokenizer (SD 3's `tokenizer_3/`), read from the folders diffusers
//!   pipelines load, with each token's span in the caption for exact noun positions.

pub mod tokenizer;

pub use tokenizer::{
    CLIP_MAX_LENGTH, ClipTokenizer, CountedTokens, Encoding, SD3_T5_MAX_LENGTH, T5Tokenizer,
    WordTokens,
};
