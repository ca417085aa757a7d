//! The CLIP and T5 tokenizers against transformers 5: every caption of the fixture
//! (`scripts/fixtures_text_tok.py`: hard cases, over-long ones, generated ones) gives the ids
//! `AutoTokenizer.from_pretrained(folder)(text, padding="max_length", max_length=n,
//! truncation=True)` gives, for each folder layout; plus the word positions and file errors.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ctcal::nouns::NounGroups;
use ctcal::nouns::Nouns;
use ctcal::nouns::{CountedTokens, NounTokens, WordTokens, ranges_to_positions};
use ctcal::nouns::{tag_nouns, word_spans, words};
use ctcal::text::{ClipTokenizer, Encoding, T5Tokenizer};
use serde_json::Value;

use crate::common::fixture;

fn references() -> &'static Value {
    static REFS: OnceLock<Value> = OnceLock::new();
    REFS.get_or_init(|| {
        let text = std::fs::read_to_string(fixture("tokenizers/references.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn captions() -> Vec<&'static str> {
    let list = references()["captions"].as_array().unwrap();
    list.iter().map(|c| c.as_str().unwrap()).collect()
}

/// The rows of reference `name`, a null row standing for the `same_as` reference's row.
fn rows(name: &str) -> Vec<&'static Value> {
    let refs = &references()[name];
    let rows = refs["rows"].as_array().unwrap();
    match refs["same_as"].as_str() {
        None => rows.iter().collect(),
        Some(base) => rows
            .iter()
            .zip(references()[base]["rows"].as_array().unwrap())
            .map(|(r, b)| if r.is_null() { b } else { r })
            .collect(),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    let list = v.as_array().unwrap();
    list.iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Compares every caption's encoding with reference `name`; returns how many were truncated.
fn check_all(name: &str, encode: impl Fn(&str) -> Encoding) -> usize {
    let refs = &references()[name];
    let pad = refs["pad_id"].as_u64().unwrap() as u32;
    let max = refs["max_length"].as_u64().unwrap() as usize;
    let rows = rows(name);
    let captions = captions();
    assert_eq!(rows.len(), captions.len());
    let mut wrong = Vec::new();
    let mut truncated = 0;
    for (caption, row) in captions.iter().zip(rows) {
        let enc = encode(caption);
        let want = ids(&row["ids"]);
        let len = row["len"].as_u64().unwrap() as usize;
        assert_eq!(
            enc.ids.len(),
            max,
            "{name}: {caption:?} not padded to {max}"
        );
        assert!(
            enc.ids[enc.len..].iter().all(|&i| i == pad),
            "{name}: padding"
        );
        assert_eq!(enc.offsets.len(), max);
        if enc.ids[..enc.len] != want[..] || enc.len != len {
            wrong.push(format!(
                "{caption:?}: {:?} != {want:?}",
                &enc.ids[..enc.len]
            ));
        }
        assert_eq!(
            enc.truncated,
            row["truncated"].as_bool().unwrap(),
            "{name}: {caption:?}"
        );
        truncated += usize::from(enc.truncated);
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} of {} captions differ from transformers, first: {}",
        wrong.len(),
        captions.len(),
        wrong[0]
    );
    truncated
}

fn clip(name: &str) -> ClipTokenizer {
    ClipTokenizer::from_folder(fixture(&format!("tokenizers/{name}"))).unwrap()
}

#[test]
fn clip_ids_equal_transformers_for_every_layout() {
    for name in ["clip_sd21", "clip_sd3", "clip_sd3_2", "clip_fast"] {
        let tok = clip(name);
        let refs = &references()[name];
        assert_eq!(
            tok.pad_id() as u64,
            refs["pad_id"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            tok.vocab_size() as u64,
            refs["vocab_size"].as_u64().unwrap()
        );
        assert_eq!(tok.max_length(), 77);
        assert_eq!((tok.bos_id(), tok.eos_id()), (1509, 1510));
        let truncated = check_all(name, |c| tok.encode(c).unwrap());
        assert!(truncated >= 5, "{name}: only {truncated} long captions");
    }
    // SD 2.1's layout pads with "!" (special_tokens_map.json overrides tokenizer_config.json),
    // SD 3's CLIP-L with <|endoftext|>.
    assert_eq!(clip("clip_sd21").pad_id(), 0);
    assert_eq!(clip("clip_sd3").pad_id(), 1510);
}

#[test]
fn clip_offsets_equal_transformers() {
    let tok = clip("clip_sd21");
    let rows = references()["clip_sd21"]["rows"].as_array().unwrap();
    for (caption, row) in captions().into_iter().zip(rows) {
        // transformers gives character offsets; ours are bytes.
        let mut byte_of: Vec<usize> = caption.char_indices().map(|(b, _)| b).collect();
        byte_of.push(caption.len());
        let want: Vec<(usize, usize)> = row["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let o = ids(o);
                (byte_of[o[0] as usize], byte_of[o[1] as usize])
            })
            .collect();
        let enc = tok.encode(caption).unwrap();
        assert_eq!(enc.offsets[..enc.len], want[..], "{caption:?}");
        assert!(enc.offsets[enc.len..].iter().all(|&o| o == (0, 0)));
    }
}

#[test]
fn t5_ids_equal_transformers_at_256_and_77() {
    let tok = T5Tokenizer::from_folder(fixture("tokenizers/t5")).unwrap();
    assert_eq!((tok.pad_id(), tok.eos_id()), (0, 1));
    let refs = &references()["t5"];
    assert_eq!(
        tok.vocab_size() as u64,
        refs["vocab_size"].as_u64().unwrap()
    );
    let long = check_all("t5", |c| tok.encode(c, 256).unwrap());
    assert!(long >= 2, "only {long} captions past 256 T5 tokens");
    let long = check_all("t5_77", |c| tok.encode(c, 77).unwrap());
    assert!(long >= 5, "only {long} captions past 77 T5 tokens");
}

#[test]
fn batches_equal_single_encodings() {
    let tok = clip("clip_sd3");
    let t5 = T5Tokenizer::from_folder(fixture("tokenizers/t5")).unwrap();
    let some = &captions()[..40];
    let batch = tok.encode_batch(some).unwrap();
    let batch5 = t5.encode_batch(some, 32).unwrap();
    for (i, c) in some.iter().enumerate() {
        assert_eq!(batch[i], tok.encode(c).unwrap());
        assert_eq!(batch5[i], t5.encode(c, 32).unwrap());
    }
}

/// Every word's tokens cover its span without gaps: the first holds the word's first byte,
/// the last its last byte (unless truncation cut the word), each begins within the previous
/// (pieces of one multi-byte character repeat its span; T5's `▁` shares the first
/// character's). CLIP's offsets are those of transformers (checked above).
#[test]
fn word_positions_tile_each_word() {
    let tok = clip("clip_sd21");
    let t5 = T5Tokenizer::from_folder(fixture("tokenizers/t5")).unwrap();
    let mut checked = 0;
    for caption in captions() {
        let clip_enc = tok.encode(caption).unwrap();
        let t5_enc = t5.encode(caption, 256).unwrap();
        let pairs = [
            (tok.word_positions(caption).unwrap(), clip_enc),
            (t5.word_positions(caption, 256).unwrap(), t5_enc),
        ];
        for (positions, enc) in pairs {
            assert_eq!(positions.len(), words(caption).len());
            for (span, range) in positions {
                if range.is_empty() {
                    assert!(enc.truncated, "{caption:?}: word {span:?} has no token");
                    continue;
                }
                let o = &enc.offsets[range.clone()];
                let (first, last) = (o[0], o[o.len() - 1]);
                assert!(
                    first.0 <= span.start && span.start < first.1,
                    "{caption:?} {span:?}"
                );
                let cut = enc.truncated && range.end == enc.len - 1;
                assert!(
                    cut || (last.0 < span.end && span.end <= last.1),
                    "{caption:?}"
                );
                for w in o.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    assert!(a.0 <= b.0 && b.0 <= a.1, "{caption:?} {span:?} {o:?}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 5000, "{checked}");
}

#[test]
fn punctuation_shifts_the_exact_positions_only() {
    let tok = clip("clip_sd21");
    for w in ["a", "red", "cat", "blue", "dog"] {
        assert_eq!(
            tok.count_tokens(w),
            1,
            "{w} is one token in the fixture vocabulary"
        );
    }
    let counted = CountedTokens(|w: &str| tok.count_tokens(w));
    let plain = "a red cat next to a blue dog";
    assert_eq!(
        tok.word_tokens(plain).unwrap(),
        ranges_to_positions(counted.positions(plain))
    );
    // "," and "." are tokens of their own: the counting convention misses them.
    let caption = "A red cat, next to a blue dog.";
    let exact = tok.word_tokens(caption).unwrap();
    assert_eq!(exact, [[1], [2], [3], [5], [6], [7], [8], [9]]);
    assert_eq!(counted.positions(caption)[7], 8..9);
    assert_eq!(
        tag_nouns(caption),
        [false, false, true, false, false, false, false, true]
    );
    let groups = Nouns::Unmarked.groups_with(caption, &tok).unwrap();
    assert_eq!(groups, NounGroups(vec![vec![3], vec![9]]));
    let words = Nouns::Words(vec!["Blue dog".into()]);
    assert_eq!(words.groups_with(caption, &tok).unwrap().0, [vec![8, 9]]);
    assert_eq!(word_spans(caption)[2], 6..9);
}

/// SD 3's joint text sequence is 77 CLIP tokens then the T5 tokens: each noun gets its CLIP
/// tokens below 77 and its T5 pieces from 77 on. Checked on ids, not on the offsets the
/// positions come from: the ids at a noun's positions in the caption's encoding are the ids of
/// the word encoded alone, in each tokenizer.
#[test]
fn sd3_nouns_take_their_clip_and_t5_tokens() {
    use ctcal::pipeline::{StableDiffusion3, TrainingPipeline};
    let device = Default::default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/tiny-sd3");
    let pipe = StableDiffusion3::<crate::common::Cpu>::load(&root, None, &device).unwrap();
    let t5 = pipe.tokenizer_3.as_ref().unwrap();
    let caption = "A red cube, to the left of a blue ball.";
    let nouns = Nouns::Words(vec!["cube".into(), "blue ball".into()]);
    let joint = nouns
        .groups_with(caption, &pipe.word_tokens(NounTokens::ClipAndT5))
        .unwrap();
    let clip_ids = pipe.tokenizer.encode(caption).unwrap().ids;
    let t5_ids = t5.encode(caption, pipe.max_sequence_length).unwrap().ids;
    for (phrase, group) in ["cube", "blue ball"].iter().zip(&joint.0) {
        let (clip, t5_pos): (Vec<usize>, Vec<usize>) = group.iter().partition(|&&p| p < 77);
        let alone = pipe.tokenizer.encode(phrase).unwrap();
        let want: Vec<u32> = alone.ids[1..alone.len - 1].to_vec();
        let got: Vec<u32> = clip.iter().map(|&p| clip_ids[p]).collect();
        assert_eq!(got, want, "{phrase}: CLIP");
        let alone = t5.encode(phrase, 32).unwrap();
        let want: Vec<u32> = alone.ids[..alone.len - 1].to_vec();
        let got: Vec<u32> = t5_pos.iter().map(|&p| t5_ids[p - 77]).collect();
        assert_eq!(got, want, "{phrase}: T5");
    }
    let clip_only = nouns
        .groups_with(caption, &pipe.word_tokens(NounTokens::Clip))
        .unwrap();
    let below: Vec<Vec<usize>> = joint
        .0
        .iter()
        .map(|g| g.iter().copied().filter(|&p| p < 77).collect())
        .collect();
    assert_eq!(clip_only.0, below);
    // The positions index the conditioning the pipeline builds.
    let (cond, _) = pipe
        .encode_prompts(&[caption], pipe.max_sequence_length)
        .unwrap();
    assert_eq!(cond.hidden.dims()[1], 77 + pipe.max_sequence_length);
    assert!(joint.check_within(cond.hidden.dims()[1]).is_ok());
}

#[test]
fn nouns_past_the_truncation_have_no_positions() {
    let tok = clip("clip_sd3");
    let caption = format!("{} and a final zebra", "a red cat, ".repeat(30));
    let positions = tok.word_positions(&caption).unwrap();
    let (span, last) = positions.last().unwrap().clone();
    assert_eq!(&caption[span], "zebra");
    assert!(last.is_empty());
    let groups = Nouns::Unmarked.groups_with(&caption, &tok).unwrap();
    assert!(groups.0.iter().flatten().all(|&p| p < 76), "{groups:?}");
    let err = Nouns::Words(vec!["zebra".into()])
        .groups_with(&caption, &tok)
        .unwrap_err();
    assert!(
        err.to_string().contains("noun \"zebra\" has no text token"),
        "{err}"
    );
}

/// A copy of fixture folder `name` to break.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ctcal-tok-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(&format!("tokenizers/{name}"))).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn clip_err(dir: &Path) -> String {
    let msg = ClipTokenizer::from_folder(dir).unwrap_err().to_string();
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

#[test]
fn broken_files_are_named() {
    let dir = scratch("clip_sd21");
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\na b\nc d e\n").unwrap();
    let msg = clip_err(&dir);
    assert!(
        msg.contains("merges.txt") && msg.contains("line 3"),
        "{msg}"
    );
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\nzz qq\n").unwrap();
    assert!(clip_err(&dir).contains("vocab.json"), "{}", clip_err(&dir));
    std::fs::remove_file(dir.join("merges.txt")).unwrap();
    let msg = clip_err(&dir);
    assert!(msg.contains("no merges.txt"), "{msg}");
    std::fs::copy(
        fixture("tokenizers/clip_sd21/merges.txt"),
        dir.join("merges.txt"),
    )
    .unwrap();
    std::fs::write(dir.join("vocab.json"), "{\"a\": 0,").unwrap();
    let msg = clip_err(&dir);
    assert!(
        msg.contains("vocab.json") && msg.contains("invalid JSON"),
        "{msg}"
    );
    std::fs::copy(
        fixture("tokenizers/clip_sd21/vocab.json"),
        dir.join("vocab.json"),
    )
    .unwrap();
    std::fs::write(dir.join("special_tokens_map.json"), "[1]").unwrap();
    let msg = clip_err(&dir);
    assert!(msg.contains("special_tokens_map.json"), "{msg}");

    let dir = scratch("clip_fast");
    std::fs::write(
        dir.join("tokenizer.json"),
        "{\"model\": {\"type\": \"Unigram\"}}",
    )
    .unwrap();
    let msg = clip_err(&dir);
    assert!(
        msg.contains("tokenizer.json") && msg.contains("not BPE"),
        "{msg}"
    );

    let dir = scratch("t5");
    std::fs::write(dir.join("tokenizer.json"), "not json").unwrap();
    let msg = T5Tokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("invalid JSON"),
        "{msg}"
    );
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let msg = T5Tokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(msg.contains("no tokenizer.json"), "{msg}");
    let msg = T5Tokenizer::from_folder(fixture("tokenizers/clip_fast")).unwrap_err();
    assert!(msg.to_string().contains("not Unigram"), "{msg}");
}

/// The tiny embedded pipelines' tokenizers (weights/) are the fixture folders.
#[test]
fn embedded_tokenizers_are_the_fixture_ones() {
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let caption = "A red cat, next to a blue dog!!";
    for (dir, name) in [
        ("tiny-sd21/tokenizer", "clip_sd21"),
        ("tiny-sd3/tokenizer", "clip_sd3"),
        ("tiny-sd3/tokenizer_2", "clip_sd3_2"),
    ] {
        let embedded = ClipTokenizer::from_folder(weights.join(dir)).unwrap();
        assert_eq!(
            embedded.encode(caption).unwrap(),
            clip(name).encode(caption).unwrap()
        );
        assert_eq!(embedded.pad_id(), clip(name).pad_id(), "{dir}");
    }
    let t5 = T5Tokenizer::from_folder(weights.join("tiny-sd3/tokenizer_3")).unwrap();
    let fixture_t5 = T5Tokenizer::from_folder(fixture("tokenizers/t5")).unwrap();
    assert_eq!(
        t5.encode(caption, 256).unwrap(),
        fixture_t5.encode(caption, 256).unwrap()
    );
}
