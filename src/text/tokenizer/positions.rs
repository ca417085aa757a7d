//! Which token positions each caption word covers: the link between the noun tagger's words
//! and the text encoder's sequence that the CTCal noun groups need.

use std::ops::Range;

use super::{ClipTokenizer, Encoding};
use crate::ctcal::tagger::word_spans;
use crate::error::Result;

/// Maps the words of a caption, as [`tagger::words`](crate::ctcal::tagger::words) splits it,
/// to text-token positions: one range per word, empty for a word with no token (truncated
/// away).
pub trait WordTokens {
    /// Token positions of each word of `caption`.
    fn word_tokens(&self, caption: &str) -> Result<Vec<Range<usize>>>;
}

/// The counting convention of [`noun_groups`](crate::ctcal::tagger::noun_groups): the start
/// token at position 0, then each word `w` covering `tokens_of(w)` (at least 1) consecutive
/// positions. Exact only when no punctuation token sits between words; a real tokenizer
/// ([`ClipTokenizer`] implements [`WordTokens`]) is exact always.
#[derive(Debug, Clone, Copy)]
pub struct CountedTokens<F>(pub F);

impl<F: Fn(&str) -> usize> CountedTokens<F> {
    /// The positions of each word of `caption` under the counting convention.
    pub fn positions(&self, caption: &str) -> Vec<Range<usize>> {
        let mut next = 1;
        crate::ctcal::tagger::words(caption)
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

impl WordTokens for ClipTokenizer {
    fn word_tokens(&self, caption: &str) -> Result<Vec<Range<usize>>> {
        let positions = self.word_positions(caption)?;
        Ok(positions.into_iter().map(|(_, tokens)| tokens).collect())
    }
}

/// For each word of `caption` (as [`word_spans`] gives them): its byte span and the range of
/// positions of `encoding` (the encoding of `caption`) whose tokens overlap it. Tokens of
/// punctuation around a word do not overlap its span and are left out; a word with no token
/// left after truncation gets the empty range `len..len`.
pub fn word_positions(caption: &str, encoding: &Encoding) -> Vec<(Range<usize>, Range<usize>)> {
    let real = &encoding.offsets[..encoding.len];
    word_spans(caption)
        .into_iter()
        .map(|span| {
            let overlaps = |&(a, b): &(usize, usize)| a < b && a < span.end && b > span.start;
            let tokens = match real.iter().position(overlaps) {
                Some(first) => {
                    let count = real[first..].iter().take_while(|o| overlaps(o)).count();
                    first..first + count
                }
                None => encoding.len..encoding.len,
            };
            (span, tokens)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encoding of "A cat, a dog." with CLIP-like positions: start, a, cat, ",", a, dog,
    /// ".", end, two pads.
    fn encoding() -> Encoding {
        let offsets = vec![
            (0, 0),
            (0, 1),
            (2, 5),
            (5, 6),
            (7, 8),
            (9, 12),
            (12, 13),
            (0, 0),
        ];
        let mut offsets = offsets;
        offsets.extend([(0, 0); 2]);
        Encoding {
            ids: vec![0; 10],
            len: 8,
            truncated: false,
            offsets,
        }
    }

    #[test]
    fn words_take_the_tokens_inside_their_span() {
        let got = word_positions("A cat, a dog.", &encoding());
        assert_eq!(
            got,
            [(0..1, 1..2), (2..5, 2..3), (7..8, 4..5), (9..12, 5..6)]
        );
        // The counting convention does not see "," and puts "dog" one position early.
        let counted = CountedTokens(|_: &str| 1).positions("A cat, a dog.");
        assert_eq!(counted, [1..2, 2..3, 3..4, 4..5]);
    }

    #[test]
    fn a_word_past_the_truncation_gets_an_empty_range() {
        let mut enc = encoding();
        // Truncated after "a": start, a, cat, ",", a, end.
        enc.len = 6;
        enc.offsets[5] = (0, 0);
        let got = word_positions("A cat, a dog.", &enc);
        assert_eq!(got[3], (9..12, 6..6));
    }

    #[test]
    fn counted_tokens_follow_the_piece_counts() {
        let pieces = |w: &str| if w == "giraffe" { 3 } else { 0 };
        let got = CountedTokens(pieces).positions("a giraffe, eating");
        assert_eq!(got, [1..2, 2..5, 5..6]);
    }
}
