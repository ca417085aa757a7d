//! A sample's nouns as its metadata row gives them: token positions, words, or nothing.

use serde::{Deserialize, Serialize};

use super::MetadataRow;
use super::metadata::find_words;
use crate::ctcal::NounGroups;
use crate::ctcal::tagger::{noun_groups_at, words};
use crate::error::{Error, Result};
use crate::text::{CountedTokens, WordTokens};

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
    /// The nouns of `row`: `noun_tokens` when given, else `nouns`, else unmarked.
    pub fn from_row(row: &MetadataRow) -> Self {
        match (&row.noun_tokens, &row.nouns) {
            (Some(groups), _) => Nouns::Tokens(NounGroups(groups.clone())),
            (None, Some(words)) => Nouns::Words(words.clone()),
            (None, None) => Nouns::Unmarked,
        }
    }

    /// Token positions of each noun of `caption`, for a text encoder whose start token sits at
    /// position 0 and which splits a word `w` (as [`words`] gives it) into `tokens_of(w)`
    /// tokens: the convention of [`noun_groups`](crate::ctcal::tagger::noun_groups), which answers for [`Nouns::Unmarked`].
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
                let group: Vec<usize> = ranges.iter().cloned().flatten().collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctcal::tagger::noun_groups;

    fn row(nouns: Option<&[&str]>, tokens: Option<Vec<Vec<usize>>>) -> MetadataRow {
        MetadataRow {
            line: 1,
            file_name: "a.png".into(),
            text: "a cat".into(),
            nouns: nouns.map(|n| n.iter().map(|s| s.to_string()).collect()),
            noun_tokens: tokens,
        }
    }

    #[test]
    fn the_row_decides_the_variant() {
        assert_eq!(
            Nouns::from_row(&row(Some(&["cat"]), Some(vec![vec![2]]))),
            Nouns::Tokens(NounGroups(vec![vec![2]]))
        );
        assert_eq!(
            Nouns::from_row(&row(Some(&["cat"]), None)),
            Nouns::Words(vec!["cat".into()])
        );
        assert_eq!(Nouns::from_row(&row(None, None)), Nouns::Unmarked);
    }

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
}
