//! Which token positions each caption word covers in a real tokenizer's encoding, exact where
//! punctuation tokens sit between words (what [`ClipTokenizer`](super::ClipTokenizer)'s
//! [`WordTokens`](crate::nouns::WordTokens) answers).

use std::ops::Range;

use super::Encoding;
use crate::nouns::word_spans;

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

/// The token positions of each word of `caption` in `encoding` ([`word_positions`] without the
/// byte spans): what a tokenizer's [`WordTokens`](crate::nouns::WordTokens) answers.
pub fn word_tokens(caption: &str, encoding: &Encoding) -> Vec<Vec<usize>> {
    word_positions(caption, encoding)
        .into_iter()
        .map(|(_, tokens)| tokens.collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nouns::CountedTokens;

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
}
