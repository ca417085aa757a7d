//! Which text-token positions each caption word covers ([`WordTokens`]), the counting
//! convention ([`CountedTokens`], [`noun_groups`]) for text sides without a real tokenizer, and
//! joint text sequences ([`JointWordTokens`]: SD 3's CLIP tokens then its T5 tokens).

use std::ops::Range;

use super::NounGroups;
use super::tagger::{noun_groups_at, words};
use crate::error::Result;

/// Maps the words of a caption, as [`words`] splits it, to text-token positions: one list
/// per word, in increasing order, empty for a word with no token (truncated away). A word
/// covers consecutive positions in one tokenizer's sequence; in a joint sequence of several
/// encoders' tokens ([`JointWordTokens`]) it covers a run in each.
pub trait WordTokens {
    /// Token positions of each word of `caption`.
    fn word_tokens(&self, caption: &str) -> Result<Vec<Vec<usize>>>;
}

impl<T: WordTokens + ?Sized> WordTokens for &T {
    fn word_tokens(&self, caption: &str) -> Result<Vec<Vec<usize>>> {
        (**self).word_tokens(caption)
    }
}

impl<T: WordTokens + ?Sized> WordTokens for Box<T> {
    fn word_tokens(&self, caption: &str) -> Result<Vec<Vec<usize>>> {
        (**self).word_tokens(caption)
    }
}

/// Which of a joint text sequence's segments a noun's tokens are taken from: SD 3 feeds the
/// MMDiT 77 CLIP tokens then the T5 tokens, and a noun has tokens in both. For a model with
/// one text encoder (SD 2.1) both choices are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum NounTokens {
    /// Every segment: the noun's CLIP and T5 tokens (its map sums all of them, as for a noun
    /// of several BPE tokens).
    #[default]
    ClipAndT5,
    /// The first segment only (CLIP); the T5 tokens take part in the renormalisation of the
    /// joint attention over text keys but carry no noun.
    Clip,
}

/// Word positions in a joint text sequence: the segments' tokenizers in order, each segment
/// starting at its offset (SD 3: CLIP at 0, T5 at 77). A word's positions are its positions in
/// every segment, shifted by the segment's offset.
pub struct JointWordTokens<'a> {
    segments: Vec<(usize, Box<dyn WordTokens + 'a>)>,
}

impl<'a> JointWordTokens<'a> {
    /// A joint sequence of `segments`: `(offset, tokenizer)` pairs.
    pub fn new(segments: Vec<(usize, Box<dyn WordTokens + 'a>)>) -> Self {
        Self { segments }
    }
}

impl WordTokens for JointWordTokens<'_> {
    fn word_tokens(&self, caption: &str) -> Result<Vec<Vec<usize>>> {
        let mut joint: Vec<Vec<usize>> = vec![Vec::new(); words(caption).len()];
        for (offset, segment) in &self.segments {
            let positions = segment.word_tokens(caption)?;
            if positions.len() != joint.len() {
                return Err(crate::error::Error::Input(format!(
                    "{} word positions for the {} words of {caption:?}",
                    positions.len(),
                    joint.len()
                )));
            }
            for (word, p) in joint.iter_mut().zip(positions) {
                word.extend(p.into_iter().map(|p| p + offset));
            }
        }
        Ok(joint)
    }
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
    fn word_tokens(&self, caption: &str) -> Result<Vec<Vec<usize>>> {
        Ok(ranges_to_positions(self.positions(caption)))
    }
}

/// One position list per range (what a tokenizer's contiguous word spans become).
pub fn ranges_to_positions(ranges: Vec<Range<usize>>) -> Vec<Vec<usize>> {
    ranges.into_iter().map(Iterator::collect).collect()
}

/// Noun token groups of `caption` for a text encoder whose start token sits at position 0:
/// word `w` covers `tokens_of(w)` consecutive positions; relation nouns are skipped.
///
/// `tokens_of` is the tokenizer's count of tokens for one lower-cased word (1 for a
/// whitespace tokenizer; the BPE piece count for CLIP). Punctuation tokens between words
/// shift the real positions: [`noun_groups_at`](super::noun_groups_at) with a tokenizer's positions is exact.
pub fn noun_groups(caption: &str, tokens_of: impl Fn(&str) -> usize) -> NounGroups {
    noun_groups_at(
        caption,
        &ranges_to_positions(CountedTokens(tokens_of).positions(caption)),
    )
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

    /// Each word's positions in every segment, shifted by the segment's offset; a word one
    /// segment truncated away keeps its positions in the others.
    #[test]
    fn joint_positions_concatenate_shifted_segments() {
        struct Cut(usize);
        impl WordTokens for Cut {
            fn word_tokens(&self, caption: &str) -> Result<Vec<Vec<usize>>> {
                let all = CountedTokens(|_: &str| 1).word_tokens(caption)?;
                Ok(all
                    .into_iter()
                    .map(|p| p.into_iter().filter(|&p| p < self.0).collect())
                    .collect())
            }
        }
        // A CLIP-like segment of 3 positions (start token, two words), then a T5-like one at 3
        // with two pieces for "giraffe" and no start token.
        let t5 = |w: &str| if w == "giraffe" { 2 } else { 1 };
        let t5_positions = move |caption: &str| -> Vec<Vec<usize>> {
            ranges_to_positions(CountedTokens(t5).positions(caption))
                .into_iter()
                .map(|p| p.into_iter().map(|p| p - 1).collect())
                .collect()
        };
        struct Fixed<F>(F);
        impl<F: Fn(&str) -> Vec<Vec<usize>>> WordTokens for Fixed<F> {
            fn word_tokens(&self, caption: &str) -> Result<Vec<Vec<usize>>> {
                Ok((self.0)(caption))
            }
        }
        let joint = JointWordTokens::new(vec![
            (0, Box::new(Cut(3))),
            (3, Box::new(Fixed(t5_positions))),
        ]);
        let got = joint.word_tokens("a tall giraffe").unwrap();
        assert_eq!(got, [vec![1, 3], vec![2, 4], vec![5, 6]]);
        let groups = crate::nouns::Nouns::Unmarked
            .groups_with("a tall giraffe", &joint)
            .unwrap();
        assert_eq!(groups, NounGroups(vec![vec![5, 6]]));
        let phrase = crate::nouns::Nouns::Words(vec!["tall giraffe".into()]);
        assert_eq!(
            phrase.groups_with("a tall giraffe", &joint).unwrap(),
            NounGroups(vec![vec![2, 4, 5, 6]])
        );
    }
}
