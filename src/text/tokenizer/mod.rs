//! Tokenizers of the SD 2.1 and SD 3 pipelines, token for token what transformers 5's
//! `CLIPTokenizer` and `T5Tokenizer` give for `tokenizer(text, padding="max_length",
//! max_length=n, truncation=True)`, the call of diffusers' `encode_prompt`.
//!
//! - [`ClipTokenizer`]: CLIP's byte-level BPE (`tokenizer/` of SD 1.x/2.x and SD 3,
//!   `tokenizer_2/` of SD 3), ported from `transformers/models/clip/tokenization_clip.py`.
//! - [`T5Tokenizer`]: T5's sentencepiece unigram model (`tokenizer_3/` of SD 3), ported from
//!   `transformers/models/t5/tokenization_t5.py`.
//! - [`word_positions`]: which token positions each caption word covers, from the tokens'
//!   spans in the caption ([`crate::nouns::WordTokens`] for the CLIP tokenizer).
//!
//! Both build the pipeline transformers builds, on the `tokenizers` crate (the library
//! transformers itself runs), taking only the vocabulary, merges, normaliser charsmap and
//! special tokens from the folder; padding and truncation are applied here, after encoding.

mod clip;
mod files;
mod positions;
mod t5;

pub use clip::{CLIP_MAX_LENGTH, ClipTokenizer};
pub use positions::word_positions;
pub use t5::{SD3_T5_MAX_LENGTH, T5Tokenizer, T5WordTokens};

use crate::error::{Error, Result};

/// One caption tokenized, padded and truncated to a fixed length, as the text encoder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, padded with the pad id to the requested length.
    pub ids: Vec<u32>,
    /// Number of real tokens (start and end tokens included): the attention mask's sum.
    pub len: usize,
    /// Whether the caption had more tokens than fit and lost its tail (the end token is
    /// kept). diffusers logs a warning then; the caller decides what to do.
    pub truncated: bool,
    /// Byte span in the caption of each position (`ids.len()` of them): `(0, 0)` for the
    /// start, end and pad tokens the tokenizer adds. Tokens normalised from other text
    /// (lower-cased, NFC-composed) span the original bytes.
    pub offsets: Vec<(usize, usize)>,
}

impl Encoding {
    /// The attention mask: 1 for the `len` real tokens, 0 for padding.
    pub fn mask(&self) -> Vec<u32> {
        (0..self.ids.len())
            .map(|i| u32::from(i < self.len))
            .collect()
    }

    /// Pads or truncates the full `encoding` of `text` (with its start and end tokens) to
    /// `max_length`: a long one keeps its first `max_length - 1` tokens and ends with `eos`.
    fn fit(encoding: &tokenizers::Encoding, max_length: usize, eos: u32, pad: u32) -> Result<Self> {
        if max_length < 2 {
            return Err(Error::Input(format!(
                "max_length {max_length}: a tokenized caption needs at least 2 positions"
            )));
        }
        let mut ids = encoding.get_ids().to_vec();
        let mut offsets = encoding.get_offsets().to_vec();
        let truncated = ids.len() > max_length;
        if truncated {
            ids.truncate(max_length - 1);
            offsets.truncate(max_length - 1);
            ids.push(eos);
            offsets.push((0, 0));
        }
        let len = ids.len();
        ids.resize(max_length, pad);
        offsets.resize(max_length, (0, 0));
        Ok(Encoding {
            ids,
            len,
            truncated,
            offsets,
        })
    }
}

/// A `tokenizers` error while encoding `text`.
fn encode_error(text: &str, error: tokenizers::Error) -> Error {
    Error::Input(format!("cannot tokenize {text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(ids: &[u32]) -> tokenizers::Encoding {
        let n = ids.len();
        let offsets = (0..n).map(|i| (i, i + 1)).collect();
        tokenizers::Encoding::new(
            ids.to_vec(),
            vec![0; n],
            vec![String::new(); n],
            vec![None; n],
            offsets,
            vec![0; n],
            vec![1; n],
            vec![],
            Default::default(),
        )
    }

    #[test]
    fn short_encodings_are_padded_long_ones_keep_the_end_token() {
        let enc = Encoding::fit(&full(&[7, 1, 2, 9]), 6, 9, 0).unwrap();
        assert_eq!(enc.ids, [7, 1, 2, 9, 0, 0]);
        assert_eq!((enc.len, enc.truncated), (4, false));
        assert_eq!(enc.mask(), [1, 1, 1, 1, 0, 0]);
        assert_eq!(enc.offsets[4..], [(0, 0), (0, 0)]);
        let enc = Encoding::fit(&full(&[7, 1, 2, 3, 4, 9]), 4, 9, 0).unwrap();
        assert_eq!(enc.ids, [7, 1, 2, 9]);
        assert_eq!((enc.len, enc.truncated), (4, true));
        assert_eq!(enc.offsets, [(0, 1), (1, 2), (2, 3), (0, 0)]);
        let exact = Encoding::fit(&full(&[7, 1, 9]), 3, 9, 0).unwrap();
        assert!(!exact.truncated);
        assert!(Encoding::fit(&full(&[7, 9]), 1, 9, 0).is_err());
    }
}
