//! T5's tokenizer, as transformers 5's `T5Tokenizer` builds it
//! (`transformers/models/t5/tokenization_t5.py`) from a `tokenizer.json`:
//!
//! 1. normalise with the sentencepiece model's precompiled charsmap (NFKC-like rules);
//! 2. split on whitespace and put `▁` before each word (`Metaspace`, prepended always);
//! 3. unigram segmentation, unknown pieces as `<unk>` (id 2), no byte fallback;
//! 4. `</s>` after; padding with `<pad>` (id 0).
//!
//! Only the unigram vocabulary and the charsmap are taken from `tokenizer.json`, as
//! transformers 5 does: files written by older transformers carry other normalisers (a
//! `Replace` of runs of spaces) that transformers 5 no longer applies.

use std::ops::Range;
use std::path::Path;

use serde_json::{Value, json};
use tokenizers::Tokenizer;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{NormalizerWrapper, Precompiled};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;

use super::files::{Specials, bad, read_json, required};
use super::{Encoding, encode_error, positions};
use crate::error::{Error, Result};
use crate::nouns::WordTokens;

/// The T5 sequence length SD 3's pipeline uses by default
/// (`StableDiffusion3Pipeline.__call__(max_sequence_length=256)`).
pub const SD3_T5_MAX_LENGTH: usize = 256;

/// T5's sentencepiece tokenizer: `encode(text, n)` gives what
/// `T5Tokenizer.from_pretrained(folder)(text, padding="max_length", max_length=n,
/// truncation=True)` gives (SD 3's `_get_t5_prompt_embeds`).
#[derive(Clone)]
pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    eos: u32,
    pad: u32,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish()
    }
}

impl T5Tokenizer {
    /// Loads a pipeline's `tokenizer_3/` folder: `tokenizer.json` (a `Unigram` model), with
    /// the special tokens of `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = required(dir, "tokenizer.json", "T5 needs the unigram model in it")?;
        let file = read_json(&path)?;
        let model = file.get("model").ok_or_else(|| bad(&path, "no model"))?;
        if model.get("type").and_then(Value::as_str) != Some("Unigram") {
            return Err(bad(&path, "the model is not Unigram: not a T5 tokenizer"));
        }
        let vocab = unigram_vocab(&path, model)?;
        let unk = model.get("unk_id").and_then(Value::as_u64).unwrap_or(2) as usize;
        let unigram = Unigram::from(vocab, Some(unk), false)
            .map_err(|e| bad(&path, format!("bad unigram model: {e}")))?;

        let mut tokenizer = Tokenizer::new(unigram);
        if let Some(charsmap) = find_precompiled(file.get("normalizer")) {
            // Decoded as the `Precompiled` type itself: through `NormalizerWrapper`, tokenizers
            // 0.22 panics on a charsmap it cannot parse instead of returning the error.
            // (It borrows from the text it reads, so it is read from a string.)
            let text = json!({"type": "Precompiled", "precompiled_charsmap": charsmap}).to_string();
            let normalizer: Precompiled = serde_json::from_str(&text)
                .map_err(|e| bad(&path, format!("bad precompiled_charsmap: {e}")))?;
            tokenizer.with_normalizer(Some(NormalizerWrapper::Precompiled(normalizer)));
        }
        tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
            WhitespaceSplit.into(),
            Metaspace::new('▁', PrependScheme::Always, true).into(),
        ])));
        let added = file.get("added_tokens").map(|a| (path.as_path(), a));
        let defaults = [
            ("eos_token", "</s>"),
            ("unk_token", "<unk>"),
            ("pad_token", "<pad>"),
        ];
        let specials = Specials::read(dir, added, &defaults)?;
        for token in &specials.to_add {
            if token.special {
                tokenizer.add_special_tokens(std::slice::from_ref(token));
            } else {
                tokenizer.add_tokens(std::slice::from_ref(token));
            }
        }
        let name = |key: &str| specials.get(key).unwrap_or_default().to_string();
        let (eos, pad) = (name("eos_token"), name("pad_token"));
        let id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                Error::Config(format!("{}: token {token:?} has no id", dir.display()))
            })
        };
        let (eos_id, pad_id) = (id(&eos)?, id(&pad)?);
        let template = TemplateProcessing::builder()
            .try_single(vec!["$A".to_string(), eos.clone()])
            .and_then(|b| b.try_pair(vec!["$A".into(), eos.clone(), "$B".into(), eos.clone()]))
            .map_err(|e| bad(&path, format!("eos token {eos:?}: {e}")))?
            .special_tokens(vec![(eos.clone(), eos_id)])
            .build()
            .map_err(|e| bad(&path, format!("eos token {eos:?}: {e}")))?;
        tokenizer.with_post_processor(Some(template));
        Ok(T5Tokenizer {
            tokenizer,
            eos: eos_id,
            pad: pad_id,
        })
    }

    /// `text` as `max_length` ids: pieces, `</s>`, padding; a caption too long keeps its
    /// first `max_length - 1` pieces and is flagged `truncated`. SD 3 uses
    /// [`SD3_T5_MAX_LENGTH`].
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Encoding> {
        let full = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| encode_error(text, e))?;
        Encoding::fit(&full, max_length, self.eos, self.pad)
    }

    /// [`encode`](Self::encode) for each caption.
    pub fn encode_batch(&self, texts: &[&str], max_length: usize) -> Result<Vec<Encoding>> {
        texts.iter().map(|t| self.encode(t, max_length)).collect()
    }

    /// For each word of `caption` as [`tagger::words`](crate::nouns::words) splits
    /// it: its byte span and the token positions it covers (no start token: the first word
    /// starts at 0; empty for a word truncated away at `max_length`).
    pub fn word_positions(
        &self,
        caption: &str,
        max_length: usize,
    ) -> Result<Vec<(Range<usize>, Range<usize>)>> {
        Ok(positions::word_positions(
            caption,
            &self.encode(caption, max_length)?,
        ))
    }

    /// The pad id (`<pad>`, 0).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The end token `</s>`'s id (1).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Vocabulary size with the added tokens (transformers' `len(tokenizer)`: the
    /// sentencepiece pieces and the 100 `<extra_id_*>` sentinels).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// [`WordTokens`] of T5 encodings of `max_length` tokens: each word's pieces, the first word
/// at position 0 (T5 has no start token), none for a word truncated away.
#[derive(Debug, Clone, Copy)]
pub struct T5WordTokens<'a> {
    /// The tokenizer.
    pub tokenizer: &'a T5Tokenizer,
    /// The encoding's length (SD 3's `max_sequence_length`).
    pub max_length: usize,
}

impl WordTokens for T5WordTokens<'_> {
    fn word_tokens(&self, caption: &str) -> Result<Vec<Vec<usize>>> {
        let encoding = self.tokenizer.encode(caption, self.max_length)?;
        Ok(positions::word_tokens(caption, &encoding))
    }
}

/// `model.vocab`: `[piece, score]` pairs.
fn unigram_vocab(path: &Path, model: &Value) -> Result<Vec<(String, f64)>> {
    let list = model.get("vocab").and_then(Value::as_array);
    let list = list.ok_or_else(|| bad(path, "model.vocab is not a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let pair = entry.as_array().filter(|p| p.len() == 2);
            let piece = pair.and_then(|p| p[0].as_str());
            let score = pair.and_then(|p| p[1].as_f64());
            match (piece, score) {
                (Some(piece), Some(score)) => Ok((piece.to_string(), score)),
                _ => Err(bad(path, format!("model.vocab[{i}] is not [piece, score]"))),
            }
        })
        .collect()
}

/// The base64 charsmap of a `Precompiled` normaliser, alone or inside a `Sequence`.
fn find_precompiled(normalizer: Option<&Value>) -> Option<Value> {
    let normalizer = normalizer?;
    match normalizer.get("type").and_then(Value::as_str)? {
        "Precompiled" => normalizer.get("precompiled_charsmap").cloned(),
        "Sequence" => normalizer
            .get("normalizers")?
            .as_array()?
            .iter()
            .find_map(|n| find_precompiled(Some(n))),
        _ => None,
    }
}
