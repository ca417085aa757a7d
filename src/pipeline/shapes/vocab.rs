//! The shapes models' word-level vocabulary: every word the caption templates use, plus
//! begin, end and padding tokens. Captions are generated, so a word tokenizer is exact and a noun's
//! token position is its word position plus one (after the begin token).

use crate::error::{Error, Result};

/// Tokens per caption: the longest template has 10 words, plus begin and end, padded.
pub const SEQ_LEN: usize = 16;

/// Word ids, then `<bos>`, `<eos>`, `<pad>`.
#[derive(Debug, Clone)]
pub struct Vocab {
    words: Vec<String>,
}

/// The words of the shapes captions, in id order: function words, colours, shape nouns
/// (singular, plural) and the relation words (the benchmark's generator writes captions from
/// exactly these; its tests check the list against its scene vocabulary).
pub const WORDS: [&str; 22] = [
    "a",
    "and",
    "one",
    "two",
    "three",
    "of",
    "the",
    "to",
    "red",
    "green",
    "blue",
    "yellow",
    "circle",
    "circles",
    "square",
    "squares",
    "triangle",
    "triangles",
    "left",
    "right",
    "above",
    "below",
];

impl Default for Vocab {
    fn default() -> Self {
        Vocab {
            words: WORDS.iter().map(|w| w.to_string()).collect(),
        }
    }
}

impl Vocab {
    /// Number of ids, specials included (the text encoder's `vocab_size`).
    pub fn len(&self) -> usize {
        self.words.len() + 3
    }

    /// Never empty; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The begin-of-text id.
    pub fn bos(&self) -> usize {
        self.words.len()
    }

    /// The end-of-text id (the text encoder pools here).
    pub fn eos(&self) -> usize {
        self.words.len() + 1
    }

    /// The padding id.
    pub fn pad(&self) -> usize {
        self.words.len() + 2
    }

    /// `<bos> words <eos> <pad>...`, [`SEQ_LEN`] ids; an unknown word or an over-long caption
    /// is an error naming it.
    pub fn encode(&self, caption: &str) -> Result<Vec<usize>> {
        let mut ids = vec![self.bos()];
        for w in caption.split_whitespace() {
            let id = self.words.iter().position(|x| x == w).ok_or_else(|| {
                Error::Input(format!(
                    "shapes vocabulary has no word {w:?} (caption {caption:?})"
                ))
            })?;
            ids.push(id);
        }
        ids.push(self.eos());
        if ids.len() > SEQ_LEN {
            return Err(Error::Input(format!(
                "caption {caption:?} has {} tokens; at most {SEQ_LEN}",
                ids.len()
            )));
        }
        ids.resize(SEQ_LEN, self.pad());
        Ok(ids)
    }

    /// The token position of each noun (whole word, first occurrence) in the encoded caption.
    pub fn noun_positions(&self, caption: &str, nouns: &[String]) -> Result<Vec<Vec<usize>>> {
        let words: Vec<&str> = caption.split_whitespace().collect();
        nouns
            .iter()
            .map(|n| {
                words
                    .iter()
                    .position(|w| w == n)
                    .map(|i| vec![i + 1])
                    .ok_or_else(|| Error::Input(format!("noun {n:?} not in caption {caption:?}")))
            })
            .collect()
    }
}
