//! CLIP's tokenizer, as transformers 5's `CLIPTokenizer` builds it
//! (`transformers/models/clip/tokenization_clip.py`):
//!
//! 1. normalise: NFC, every whitespace run to one space, lower-case;
//! 2. split on CLIP's regex (start/end markers, `'s 't 're 've 'm 'll 'd`, letter runs, single
//!    digits, runs of other non-space characters), dropping the spaces between;
//! 3. map bytes to GPT-2's printable characters (byte-level);
//! 4. BPE with `</w>` marking the last piece of each word;
//! 5. `<|startoftext|>` before, `<|endoftext|>` after.
//!
//! The special tokens (start, end, pad, unknown) are matched in the raw caption first, so a
//! literal `<|endoftext|>` is one token and, with SD 2.1's pad token `!`, so is every `!`.

use std::ops::Range;
use std::path::Path;

use serde_json::{Value, json};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as Normalizers};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use super::files::{Specials, bad, read_json, required};
use super::{Encoding, encode_error, positions};
use crate::error::{Error, Result};
use crate::nouns::WordTokens;

/// CLIP's pre-tokenizer pattern (the words it keeps; what lies between is dropped).
const PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// CLIP's context length, used when the folder's config gives none.
pub const CLIP_MAX_LENGTH: usize = 77;

/// CLIP's BPE tokenizer with the folder's pad token and length: `encode` gives what
/// `CLIPTokenizer.from_pretrained(folder)(text, padding="max_length",
/// max_length=model_max_length, truncation=True)` gives.
#[derive(Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("max_length", &self.max_length)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads a pipeline's `tokenizer/` (or `tokenizer_2/`) folder: `tokenizer.json` when
    /// present, else `vocab.json` + `merges.txt`; special tokens and `model_max_length` (77
    /// when absent) from `tokenizer_config.json` / `special_tokens_map.json`.
    ///
    /// As transformers 5 does, only the vocabulary and merges are taken from
    /// `tokenizer.json`: the pipeline is always CLIP's.
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let json_path = dir.join("tokenizer.json");
        let (vocab, merges, file) = if json_path.is_file() {
            let file = read_json(&json_path)?;
            let (vocab, merges) = model_from_json(&json_path, &file)?;
            (vocab, merges, Some(file))
        } else {
            let what = "nor tokenizer.json: not a CLIP tokenizer folder";
            let vocab_path = required(dir, "vocab.json", what)?;
            let merges_path = required(dir, "merges.txt", what)?;
            let vocab = read_json(&vocab_path)?;
            if !vocab.is_object() {
                return Err(bad(&vocab_path, "not a JSON object of token ids"));
            }
            (vocab, read_merges(&merges_path)?, None)
        };
        let added = file
            .as_ref()
            .and_then(|f| f.get("added_tokens"))
            .map(|a| (json_path.as_path(), a));
        let defaults = [
            ("bos_token", "<|startoftext|>"),
            ("eos_token", "<|endoftext|>"),
            ("unk_token", "<|endoftext|>"),
            ("pad_token", "<|endoftext|>"),
        ];
        let specials = Specials::read(dir, added, &defaults)?;
        let name = |key: &str| specials.get(key).unwrap_or_default().to_string();
        let (bos, eos, unk, pad) = (
            name("bos_token"),
            name("eos_token"),
            name("unk_token"),
            name("pad_token"),
        );
        let source = match file {
            Some(_) => json_path.clone(),
            None => dir.join("vocab.json + merges.txt"),
        };
        let model: BPE = serde_json::from_value(json!({
            "vocab": vocab,
            "merges": merges,
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
        }))
        .map_err(|e| {
            bad(
                &source,
                format!("the merges do not fit the vocabulary: {e}"),
            )
        })?;

        let mut tokenizer = Tokenizer::new(model);
        let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ");
        let split = Split::new(
            SplitPattern::Regex(PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        );
        let (whitespace, split) = match (whitespace, split) {
            (Ok(w), Ok(s)) => (w, s),
            (Err(e), _) | (_, Err(e)) => return Err(Error::Config(format!("CLIP regex: {e}"))),
        };
        tokenizer.with_normalizer(Some(Normalizers::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])));
        tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        for token in &specials.to_add {
            if token.special {
                tokenizer.add_special_tokens(std::slice::from_ref(token));
            } else {
                tokenizer.add_tokens(std::slice::from_ref(token));
            }
        }
        let id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                Error::Config(format!("{}: token {token:?} has no id", dir.display()))
            })
        };
        let (bos_id, eos_id, pad_id) = (id(&bos)?, id(&eos)?, id(&pad)?);
        tokenizer.with_post_processor(Some(
            RobertaProcessing::new((eos, eos_id), (bos, bos_id))
                .trim_offsets(false)
                .add_prefix_space(false),
        ));
        Ok(ClipTokenizer {
            tokenizer,
            max_length: specials.model_max_length.unwrap_or(CLIP_MAX_LENGTH),
            bos: bos_id,
            eos: eos_id,
            pad: pad_id,
        })
    }

    /// `text` as `max_length()` ids: start token, BPE tokens, end token, padding; a caption
    /// too long keeps its first `max_length() - 2` tokens and is flagged `truncated`.
    pub fn encode(&self, text: &str) -> Result<Encoding> {
        let full = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| encode_error(text, e))?;
        Encoding::fit(&full, self.max_length, self.eos, self.pad)
    }

    /// [`encode`](Self::encode) for each caption.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }

    /// For each word of `caption` as [`tagger::words`](crate::nouns::words) splits
    /// it: its byte span in the caption and the token positions it covers (start token at 0;
    /// empty for a word truncated away). Surrounding punctuation is not part of a word, so
    /// its tokens are not either.
    pub fn word_positions(&self, caption: &str) -> Result<Vec<(Range<usize>, Range<usize>)>> {
        Ok(positions::word_positions(caption, &self.encode(caption)?))
    }

    /// The number of BPE tokens of one word, for the counting convention of
    /// [`noun_groups`](crate::nouns::noun_groups) (`tokens_of`). Exact for plain
    /// words; prefer [`word_positions`](Self::word_positions) or the [`WordTokens`]
    /// implementation for captions with punctuation.
    ///
    /// [`WordTokens`]: crate::nouns::WordTokens
    pub fn count_tokens(&self, word: &str) -> usize {
        self.tokenizer
            .encode(word, false)
            .map(|e| e.get_ids().len())
            .unwrap_or(1)
    }

    /// The sequence length `encode` pads to (`model_max_length`, 77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The pad id (0, `!`, for SD 2.1 and SD 3's `tokenizer_2`; `<|endoftext|>` for SD 1.x
    /// and SD 3's `tokenizer`).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The start token `<|startoftext|>`'s id.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The end token `<|endoftext|>`'s id (CLIP pools the text embedding at its position).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Vocabulary size with the added tokens (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// The vocabulary and merges of a `tokenizer.json` BPE model.
fn model_from_json(path: &Path, file: &Value) -> Result<(Value, Value)> {
    let model = file.get("model").ok_or_else(|| bad(path, "no model"))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(bad(path, "the model is not BPE: not a CLIP tokenizer"));
    }
    let vocab = model.get("vocab").filter(|v| v.is_object());
    let vocab = vocab.ok_or_else(|| bad(path, "model.vocab is not an object"))?;
    let merges = model.get("merges").filter(|v| v.is_array());
    let merges = merges.ok_or_else(|| bad(path, "model.merges is not a list"))?;
    Ok((vocab.clone(), merges.clone()))
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair per line.
fn read_merges(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split(' ').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad(
                path,
                format!("line {}: {line:?} is not a merge `left right`", i + 1),
            ));
        }
        merges.push(json!([parts[0], parts[1]]));
    }
    Ok(Value::Array(merges))
}
/// Exact positions from the tokens' spans in the caption ([`word_positions`](super::word_positions)).
impl WordTokens for ClipTokenizer {
    fn word_tokens(&self, caption: &str) -> Result<Vec<Vec<usize>>> {
        Ok(positions::word_tokens(caption, &self.encode(caption)?))
    }
}
