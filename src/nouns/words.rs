//! Which text-token positions each caption word covers ([`WordTokens`]), and the counting
//! convention ([`CountedTokens`], [`noun_groups`]) for text sides without a real tokenizer.

use std::ops::Range;

use super::NounGroups;
use super::tagger::{noun_groups_at, words};
use crate::error::Result;

/// Maps the words of a caption, as [`words`] splits it,
/// to text-token positions: one range per word, empty for a word with no token (truncated
/// away).
pub trait WordTokens {
    /// Token positions of each word of `caption`.
    fn word_tokens(&self, caption: &str) -> Result<Vec<Range<usize>>>;
}

/// The counting convention of [`noun_groups`]: the start
/// token at position 0, then each word `w` covering `tokens_of(w)` (at least 1) consecutive
/// positions. Exact only when no punctuation token sits between words; a real tokenizer
/// (`text::ClipTokenizer` implements [`WordTokens`]) is exact always.
#[derive(Debug, Clone, Copy)]
pub struct CountedTokens<F>(pub F);

impl<F: Fn(&str) -> usize> CountedTokens<F> {
    /// The positions of each word of `caption` under the counting convention.
    pub fn positions(&self, caption: &str) -> Vec<Range<usize>> {
        let mut next = 1;
        words(caption)
            .iter()
            .map(|w| {
                let start = next;
                next += (self.0)(w).max(1);
                start..next
            })
            .collect()
    }
}

impl<F: Fn(&str) -> usize> WordTokens for CountedTokens<F> {
    fn word_tokens(&self, caption: &str) -> Result<Vec<Range<usize>>> {
        Ok(self.positions(caption))
    }
}

/// Noun token groups of `caption` for a text encoder whose start token sits at position 0:
/// word `w` covers `tokens_of(w)` consecutive positions; relation nouns are skipped.
///
/// `tokens_of` is the tokenizer's count of tokens for one lower-cased word (1 for a
/// whitespace tokenizer; the BPE piece count for CLIP). Punctuation tokens between words
/// shift the real positions: [`noun_groups_at`](super::noun_groups_at) with a tokenizer's positions is exact.
pub fn noun_groups(caption: &str, tokens_of: impl Fn(&str) -> usize) -> NounGroups {
    noun_groups_at(caption, &CountedTokens(tokens_of).positions(caption))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_tokens_follow_the_piece_counts() {
        let pieces = |w: &str| if w == "giraffe" { 3 } else { 0 };
        let got = CountedTokens(pieces).positions("a giraffe, eating");
        assert_eq!(got, [1..2, 2..5, 5..6]);
    }
}
