//! Noun selection: which text tokens of a caption form each noun that CTCal supervises.
//!
//! - [`NounGroups`]: the token positions of each noun in the text-encoder sequence, what the
//!   loss consumes.
//! - [`Nouns`]: a caption's nouns as its data marks them (token positions, words or phrases,
//!   or nothing), and [`find_words`] for phrases.
//! - [`WordTokens`]: which token positions each caption word covers (a real tokenizer's
//!   offsets, or the [`CountedTokens`] convention).
//! - [`tag_nouns`] / [`noun_groups`]: the built-in rule-based English tagger for unmarked
//!   captions.

mod groups;
mod marked;
mod tagger;
mod words;

pub use groups::NounGroups;
pub use marked::{Nouns, find_words};
pub use tagger::{noun_groups_at, tag_nouns, word_spans, words};
pub use words::{
    CountedTokens, JointWordTokens, NounTokens, WordTokens, noun_groups, ranges_to_positions,
};
