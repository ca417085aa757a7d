//! A caption's nouns as its data marks them ([`Nouns`]: token positions, words or phrases, or
//! nothing), turned into [`NounGroups`] by a tokenizer's word positions.

use serde::{Deserialize, Serialize};

use super::tagger::{noun_groups_at, words};
use super::{CountedTokens, NounGroups, WordTokens};
use crate::error::{Error, Result};

/// The nouns of one sample, kept in the form the metadata gives them: only token positions
/// can be used by the loss, and words need the tokenizer to become positions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Nouns {
    /// Token positions from the row's `noun_tokens` (start token at 0): used as they are.
    Tokens(NounGroups),
    /// Caption words or phrases from the row's `nouns` (possibly none): their positions
    /// depend on the tokenizer.
    Words(Vec<String>),
    /// The row marks no nouns: [`Nouns::groups`] asks the built-in tagger.
    Unmarked,
}

impl Nouns {
    /// Token positions of each noun of `caption`, for a text encoder whose start token sits at
    /// position 0 and which splits a word `w` (as [`words`] gives it) into `tokens_of(w)`
    /// tokens: the convention of [`noun_groups`](super::noun_groups), which answers for [`Nouns::Unmarked`].
    ///
    /// A phrase covers the tokens of all its words, at its first occurrence; a phrase not in
    /// the caption is an error naming it. [`groups_with`](Self::groups_with) and a tokenizer
    /// give exact positions where punctuation tokens sit between words.
    pub fn groups(&self, caption: &str, tokens_of: impl Fn(&str) -> usize) -> Result<NounGroups> {
        self.groups_with(caption, &CountedTokens(tokens_of))
    }

    /// Token positions of each noun of `caption`, with each word's positions from
    /// `word_tokens` (a [`ClipTokenizer`](crate::text::ClipTokenizer) for exact ones):
    /// [`noun_groups_at`] answers for [`Nouns::Unmarked`]; a phrase covers the tokens of all
    /// its words at its first occurrence, and one not in the caption or with no token left
    /// after truncation is an error naming it.
    pub fn groups_with(&self, caption: &str, word_tokens: &dyn WordTokens) -> Result<NounGroups> {
        let phrases = match self {
            Nouns::Tokens(groups) => return Ok(groups.clone()),
            Nouns::Unmarked => {
                return Ok(noun_groups_at(caption, &word_tokens.word_tokens(caption)?));
            }
            Nouns::Words(phrases) => phrases,
        };
        if phrases.is_empty() {
            return Ok(NounGroups::none());
        }
        let caption_words = words(caption);
        let positions = word_tokens.word_tokens(caption)?;
        let groups = phrases
            .iter()
            .map(|p| {
                let first = find_words(&caption_words, p).ok_or_else(|| {
                    Error::Input(format!(
                        "noun {p:?} is not a whole word of the caption {caption:?}"
                    ))
                })?;
                let end = first + words(p).len();
                let ranges = positions.get(first..end).ok_or_else(|| {
                    Error::Input(format!(
                        "{} word positions for the {} words of {caption:?}",
                        positions.len(),
                        caption_words.len()
                    ))
                })?;
                let group: Vec<usize> = ranges.iter().flatten().copied().collect();
                if group.is_empty() {
                    return Err(Error::Input(format!(
                        "noun {p:?} has no text token: the caption {caption:?} is truncated \
                         before it"
                    )));
                }
                Ok(group)
            })
            .collect::<Result<_>>()?;
        Ok(NounGroups(groups))
    }
}

/// The index of the first word of `phrase` (split as the tagger splits captions) within
/// `caption_words`, matching whole words case-insensitively; `None` if absent or empty.
pub fn find_words(caption_words: &[String], phrase: &str) -> Option<usize> {
    let target = words(phrase);
    if target.is_empty() || target.len() > caption_words.len() {
        return None;
    }
    caption_words
        .windows(target.len())
        .position(|w| w == target.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nouns::noun_groups;

    #[test]
    fn words_become_the_positions_of_their_tokens() {
        // a(1) red(2) giraffe(3,4,5) near(6) a(7) coffee(8) cup(9,10)
        let pieces = |w: &str| match w {
            "giraffe" => 3,
            "cup" => 2,
            _ => 1,
        };
        let caption = "A red giraffe near a coffee cup.";
        let nouns = Nouns::Words(vec!["Giraffe".into(), "coffee cup".into()]);
        assert_eq!(
            nouns.groups(caption, pieces).unwrap(),
            NounGroups(vec![vec![3, 4, 5], vec![8, 9, 10]])
        );
        let tokens = Nouns::Tokens(NounGroups(vec![vec![7]]));
        assert_eq!(tokens.groups(caption, pieces).unwrap().0, vec![vec![7]]);
        assert_eq!(
            Nouns::Unmarked.groups(caption, pieces).unwrap(),
            noun_groups(caption, pieces)
        );
        assert!(
            Nouns::Words(vec![])
                .groups(caption, pieces)
                .unwrap()
                .is_empty()
        );
        let err = Nouns::Words(vec!["dog".into()])
            .groups(caption, pieces)
            .unwrap_err();
        assert!(err.to_string().contains("noun \"dog\""), "{err}");
    }

    #[test]
    fn phrases_match_whole_words_only() {
        let caption = words("A coffee-cup; the Cat's toy, a cat");
        assert_eq!(find_words(&caption, "cat"), Some(6));
        assert_eq!(find_words(&caption, "Cat's toy"), Some(3));
        assert_eq!(find_words(&caption, "coffee"), None);
        assert_eq!(find_words(&caption, "  "), None);
    }
}
