//! The built-in noun tagger against spaCy's `en_core_web_sm` (3.8) on 600 compositional
//! captions (`scripts/make_noun_captions.py`): word-level agreement on noun / not noun.

use ctcal::nouns::{tag_nouns, words};

use crate::common::fixture;

#[derive(serde::Deserialize)]
struct Row {
    text: String,
    words: Vec<String>,
    nouns: Vec<bool>,
}

#[test]
fn agrees_with_spacy_on_compositional_captions() {
    let text = std::fs::read_to_string(fixture("nouns/captions.jsonl")).unwrap();
    let rows: Vec<Row> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() >= 500);
    let (mut agree, mut total, mut tp, mut fp, mut fneg) = (0, 0, 0, 0, 0);
    let mut misses = Vec::new();
    for row in &rows {
        let ours_words = words(&row.text);
        let spacy_words: Vec<String> = row.words.iter().map(|w| w.to_lowercase()).collect();
        assert_eq!(ours_words, spacy_words, "tokenisation of {:?}", row.text);
        let ours = tag_nouns(&row.text);
        for (i, (&a, &b)) in ours.iter().zip(&row.nouns).enumerate() {
            total += 1;
            agree += (a == b) as usize;
            tp += (a && b) as usize;
            fp += (a && !b) as usize;
            fneg += (!a && b) as usize;
            if a != b && misses.len() < 12 {
                misses.push(format!(
                    "{} [{}: ours {a}, spaCy {b}]",
                    row.text, ours_words[i]
                ));
            }
        }
    }
    let accuracy = agree as f64 / total as f64;
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fneg) as f64;
    println!(
        "noun tagger vs spaCy: {} captions, {total} words, agreement {:.2}%, noun precision {:.2}%, recall {:.2}%",
        rows.len(),
        100.0 * accuracy,
        100.0 * precision,
        100.0 * recall
    );
    for m in &misses {
        println!("  {m}");
    }
    assert!(accuracy >= 0.97, "agreement {accuracy:.4} below 97%");
}
