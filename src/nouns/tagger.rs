//! A built-in English noun tagger for captions, needing no model and no network.
//!
//! Rules, not a noun list: closed-class words (determiners, numbers, prepositions, pronouns,
//! conjunctions, auxiliaries) and a lexicon of adjectives common in captions (colours, sizes,
//! textures, shapes) are never nouns; any other word is a noun when it ends a noun phrase or
//! stands before another noun (compounds such as "coffee cup", as spaCy tags them), unless its
//! position marks it as a verb (an `-ing`/`-ed`/`-s` word right after a noun phrase). Measured
//! against spaCy's `en_core_web_sm` in the test suite (README reports the figure).

use std::ops::Range;

use super::NounGroups;

/// The words of `caption` as the tagger sees them: lower-cased, split on whitespace, with
/// surrounding punctuation removed and empty pieces dropped.
pub fn words(caption: &str) -> Vec<String> {
    word_spans(caption)
        .into_iter()
        .map(|span| caption[span].to_lowercase())
        .collect()
}

/// The byte span in `caption` of each of its [`words`] (before lower-casing).
pub fn word_spans(caption: &str) -> Vec<Range<usize>> {
    caption
        .split_whitespace()
        .filter_map(|piece| {
            let word = piece.trim_matches(|c: char| !c.is_alphanumeric());
            // `piece` and `word` are slices of `caption`: their offsets are pointer distances.
            let start = word.as_ptr() as usize - caption.as_ptr() as usize;
            (!word.is_empty()).then(|| start..start + word.len())
        })
        .collect()
}

const DETERMINERS: &[&str] = &[
    "a", "an", "the", "this", "that", "these", "those", "each", "every", "some", "any", "no",
    "another", "both", "all", "its", "their", "his", "her", "my", "our", "your",
];
const NUMBERS: &[&str] = &[
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "several", "many", "few", "multiple", "numerous",
];
const PREPOSITIONS: &[&str] = &[
    "on",
    "in",
    "at",
    "of",
    "to",
    "with",
    "by",
    "near",
    "under",
    "over",
    "above",
    "below",
    "behind",
    "beside",
    "besides",
    "between",
    "among",
    "across",
    "along",
    "around",
    "through",
    "into",
    "onto",
    "from",
    "for",
    "inside",
    "outside",
    "against",
    "toward",
    "towards",
    "atop",
    "underneath",
    "beneath",
    "without",
    "within",
    "upon",
    "during",
    "like",
    "next",
    "off",
];
const OTHER_CLOSED: &[&str] = &[
    "and", "or", "but", "nor", "while", "as", "than", "it", "they", "them", "he", "she", "we",
    "you", "i", "me", "him", "us", "which", "who", "whose", "what", "where", "is", "are", "was",
    "were", "be", "been", "being", "has", "have", "had", "does", "do", "did", "can", "could",
    "will", "would", "should", "may", "might", "must", "not", "very", "there", "here", "together",
    "also", "too", "each", "other",
];
const ADJECTIVES: &[&str] = &[
    // colours
    "red",
    "blue",
    "green",
    "yellow",
    "black",
    "white",
    "pink",
    "purple",
    "orange",
    "brown",
    "gray",
    "grey",
    "golden",
    "silver",
    "violet",
    "beige",
    "turquoise",
    "cyan",
    "magenta",
    "maroon",
    "navy",
    "teal",
    "crimson",
    "colorful",
    "colourful",
    "dark",
    "light",
    "bright",
    "pale",
    // sizes and shapes
    "big",
    "small",
    "large",
    "tiny",
    "huge",
    "little",
    "tall",
    "short",
    "long",
    "wide",
    "narrow",
    "thin",
    "thick",
    "giant",
    "round",
    "rectangular",
    "circular",
    "spherical",
    "cubic",
    "cylindrical",
    "flat",
    "curved",
    "straight",
    "square",
    // textures and materials
    "wooden",
    "metallic",
    "fluffy",
    "furry",
    "shiny",
    "rough",
    "smooth",
    "soft",
    "hard",
    "glossy",
    "matte",
    "fuzzy",
    "silky",
    "woolen",
    "woollen",
    "golden",
    "transparent",
    "striped",
    "spotted",
    "checkered",
    "plaid",
    "rusty",
    "muddy",
    "wet",
    "dry",
    // others common in captions
    "old",
    "new",
    "young",
    "modern",
    "ancient",
    "beautiful",
    "cute",
    "happy",
    "sad",
    "angry",
    "hot",
    "cold",
    "warm",
    "cool",
    "empty",
    "full",
    "open",
    "closed",
    "broken",
    "clean",
    "dirty",
    "fresh",
    "ripe",
    "sleepy",
    "busy",
    "quiet",
    "delicious",
    "single",
    "left",
    "right",
];
const AUXILIARIES: &[&str] = &["is", "are", "was", "were", "be", "been", "being"];
/// Nouns that name a place in a relation ("to the left of", "on top of"): spaCy tags them
/// NOUN, but they are not objects and are left out of [`noun_groups`].
pub const RELATION_NOUNS: &[&str] = &[
    "left", "right", "top", "bottom", "front", "back", "side", "middle", "center", "centre",
    "corner", "edge",
];

fn is_closed(w: &str) -> bool {
    DETERMINERS.contains(&w)
        || NUMBERS.contains(&w)
        || PREPOSITIONS.contains(&w)
        || OTHER_CLOSED.contains(&w)
        || w.chars().all(|c| c.is_ascii_digit())
}

fn is_adjective(w: &str) -> bool {
    ADJECTIVES.contains(&w)
        || ["ous", "ful", "less", "ive", "ish", "able", "ible"]
            .iter()
            .any(|s| w.len() > s.len() + 2 && w.ends_with(s))
}

fn verb_like(w: &str) -> bool {
    (w.ends_with("ing") && w.len() > 5) || (w.ends_with("ed") && w.len() > 4)
}

/// Whether each word of `caption` (as [`words`] splits it) is a noun.
pub fn tag_nouns(caption: &str) -> Vec<bool> {
    let ws = words(caption);
    let n = ws.len();
    let word = |i: usize| ws.get(i).map(String::as_str).unwrap_or("");
    // "left" in "to the left of", "top" in "on top of", "front" in "in front of".
    let relation = |i: usize| {
        RELATION_NOUNS.contains(&word(i))
            && word(i + 1) == "of"
            && i > 0
            && matches!(word(i - 1), "the" | "on" | "in" | "at")
    };
    // A verb right after a noun: "a man riding", "a dog chases a ball".
    let verb_after_noun = |i: usize| {
        verb_like(word(i)) || (word(i).ends_with('s') && DETERMINERS.contains(&word(i + 1)))
    };
    let mut noun = vec![false; n];
    let mut i = 0;
    while i < n {
        if relation(i) {
            noun[i] = true;
            i += 1;
            continue;
        }
        if is_closed(word(i)) {
            i += 1;
            continue;
        }
        // A participle after an auxiliary: "is sitting", "are parked".
        if verb_like(word(i)) && i > 0 && AUXILIARIES.contains(&word(i - 1)) {
            i += 1;
            continue;
        }
        // A run of open-class words: adjectives, then compound and head nouns. It ends at a
        // closed word, a relation noun, or a verb after a noun.
        let start = i;
        i += 1;
        while i < n && !is_closed(word(i)) && !relation(i) {
            if !is_adjective(word(i - 1)) && verb_after_noun(i) {
                break;
            }
            i += 1;
        }
        let last = i - 1;
        for (j, flag) in noun.iter_mut().enumerate().take(last).skip(start) {
            *flag = !is_adjective(word(j));
        }
        // The head is a noun unless it is a lone predicate adjective ("the car is red").
        let after_det = start > 0
            && (DETERMINERS.contains(&word(start - 1)) || NUMBERS.contains(&word(start - 1)));
        noun[last] = !(start == last && is_adjective(word(last)) && !after_det);
        // Skip the verb that ended the run.
        if noun[last] && i < n && verb_after_noun(i) && !is_closed(word(i)) {
            i += 1;
        }
    }
    noun
}

/// Noun token groups of `caption` given the token positions of each of its [`words`]
/// (`positions[k]` for word `k`, as [`WordTokens`](super::WordTokens) gives them);
/// relation nouns and nouns without positions (truncated away) are skipped.
pub fn noun_groups_at(caption: &str, positions: &[Vec<usize>]) -> NounGroups {
    let ws = words(caption);
    let tags = tag_nouns(caption);
    let groups = ws
        .iter()
        .zip(tags)
        .zip(positions)
        .filter(|((w, is_noun), range)| {
            *is_noun && !RELATION_NOUNS.contains(&w.as_str()) && !range.is_empty()
        })
        .map(|(_, positions)| positions.clone())
        .collect();
    NounGroups(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nouns::noun_groups;

    fn nouns(caption: &str) -> Vec<String> {
        words(caption)
            .into_iter()
            .zip(tag_nouns(caption))
            .filter(|(_, n)| *n)
            .map(|(w, _)| w)
            .collect()
    }

    #[test]
    fn typical_captions() {
        assert_eq!(
            nouns("A red circle to the left of a blue square."),
            ["circle", "left", "square"]
        );
        assert_eq!(nouns("two yellow triangles"), ["triangles"]);
        assert_eq!(nouns("a man riding a brown horse"), ["man", "horse"]);
        assert_eq!(
            nouns("a dog chases a ball in the park"),
            ["dog", "ball", "park"]
        );
        assert_eq!(
            nouns("a coffee cup on a wooden table"),
            ["coffee", "cup", "table"]
        );
    }

    #[test]
    fn word_spans_are_the_words_before_lower_casing() {
        let caption = " (A) Red-cat,  über\tX!";
        let spans = word_spans(caption);
        let raw: Vec<&str> = spans.iter().map(|s| &caption[s.clone()]).collect();
        assert_eq!(raw, ["A", "Red-cat", "über", "X"]);
        assert_eq!(words(caption), ["a", "red-cat", "über", "x"]);
    }

    #[test]
    fn exact_positions_skip_relations_and_truncated_nouns() {
        let caption = "a red giraffe to the left of a cat";
        let mut positions: Vec<_> = (1..10).map(|p| vec![p]).collect();
        positions[2] = vec![3, 4, 5];
        assert_eq!(
            noun_groups_at(caption, &positions),
            NounGroups(vec![vec![3, 4, 5], vec![9]])
        );
        positions[8] = vec![];
        assert_eq!(
            noun_groups_at(caption, &positions),
            NounGroups(vec![vec![3, 4, 5]])
        );
    }

    #[test]
    fn groups_shift_by_the_start_token_and_span_word_pieces() {
        // "a" "red" "giraffe"(3 pieces) "left"(relation, skipped) ...
        let pieces = |w: &str| if w == "giraffe" { 3 } else { 1 };
        let g = noun_groups("a red giraffe to the left of a cat", pieces);
        assert_eq!(g, NounGroups(vec![vec![3, 4, 5], vec![11]]));
    }
}
