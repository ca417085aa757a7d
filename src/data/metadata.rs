//! `metadata.jsonl`, the diffusers image-folder convention: one JSON object per line naming a
//! file (relative to the metadata file's folder) and its caption.
//!
//! ```text
//! {"file_name": "0001.png", "text": "a red cube on a table"}
//! {"file_name": "0002.png", "text": "a cat next to a dog", "nouns": ["cat", "dog"]}
//! {"file_name": "0003.safetensors", "text": "a cat", "nouns": ["cat"], "noun_tokens": [[2]]}
//! ```
//!
//! `nouns` are caption words (or phrases) to supervise; `noun_tokens` are their token
//! positions in the text-encoder sequence, for cached features whose tokens are known. Other
//! fields are ignored and blank lines skipped. A bad row is reported with its 1-based line and
//! either skipped or fatal, by [`BadRowPolicy`].

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nouns::{NounGroups, Nouns, find_words, words};

/// What to do with a bad row: a missing or unreadable file, an empty caption, a noun not in
/// the caption, malformed JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BadRowPolicy {
    /// Leave the row out, record it in a [`BadRows`] report and go on.
    Skip,
    /// Stop with an [`Error::Data`] naming `<metadata>:<line>` and the reason.
    Fail,
}

/// One bad row: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// The metadata file.
    pub metadata: PathBuf,
    /// 1-based line number in the metadata file.
    pub line: usize,
    /// The row's `file_name`, when it has one.
    pub file_name: Option<String>,
    /// What is wrong, naming the file where one is at fault ("missing file foo.png").
    pub reason: String,
}

impl BadRow {
    /// Applies `policy`: `Ok(bad_row)` to record it when skipping, the error when failing.
    pub fn apply(self, policy: BadRowPolicy) -> Result<BadRow> {
        match policy {
            BadRowPolicy::Skip => Ok(self),
            BadRowPolicy::Fail => Err(self.into()),
        }
    }
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}",
            self.metadata.display(),
            self.line,
            self.reason
        )
    }
}

impl From<BadRow> for Error {
    fn from(row: BadRow) -> Self {
        Error::Data {
            file: row.metadata,
            line: row.line,
            message: row.reason,
        }
    }
}

/// The bad rows a [`BadRowPolicy::Skip`] run left out, for one summary message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BadRows(pub Vec<BadRow>);

impl BadRows {
    /// Whether no row was skipped.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of skipped rows.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for BadRows {
    /// `skipped 2 rows: metadata.jsonl:7: missing file foo.png; metadata.jsonl:9: empty caption`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "skipped {n} row{}", if n == 1 { "" } else { "s" })?;
        for (i, row) in self.0.iter().enumerate() {
            write!(f, "{}{row}", if i == 0 { ": " } else { "; " })?;
        }
        Ok(())
    }
}

/// One good row of `metadata.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRow {
    /// 1-based line number in the metadata file.
    pub line: usize,
    /// The file, relative to the metadata file's folder.
    pub file_name: String,
    /// The caption.
    pub text: String,
    /// Caption words (or phrases) marked as nouns, each found in the caption as whole words.
    pub nouns: Option<Vec<String>>,
    /// Token positions of each noun; when `nouns` is also given, one group per noun.
    pub noun_tokens: Option<Vec<Vec<usize>>>,
}

impl MetadataRow {
    /// The row's nouns: `noun_tokens` when given, else `nouns`, else unmarked.
    pub fn nouns(&self) -> Nouns {
        match (&self.noun_tokens, &self.nouns) {
            (Some(groups), _) => Nouns::Tokens(NounGroups(groups.clone())),
            (None, Some(words)) => Nouns::Words(words.clone()),
            (None, None) => Nouns::Unmarked,
        }
    }
}

/// The fields we read; everything optional so a missing field is our message, not serde's.
#[derive(Deserialize)]
struct RawRow {
    file_name: Option<String>,
    text: Option<String>,
    nouns: Option<Vec<String>>,
    noun_tokens: Option<Vec<Vec<usize>>>,
}

/// A parsed `metadata.jsonl`: its good rows and the rows it skipped.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// The metadata file.
    pub path: PathBuf,
    /// The folder `file_name`s are relative to (the metadata file's folder).
    pub root: PathBuf,
    /// Good rows, in file order.
    pub rows: Vec<MetadataRow>,
    /// Bad rows left out under [`BadRowPolicy::Skip`].
    pub skipped: BadRows,
}

impl Metadata {
    /// Reads and checks `path` line by line; each row's file must exist under its folder.
    pub fn read(path: &Path, policy: BadRowPolicy) -> Result<Self> {
        let content = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let root = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut rows = Vec::new();
        let mut skipped = BadRows::default();
        let content = content.strip_prefix('\u{feff}').unwrap_or(&content);
        for (i, text) in content.lines().enumerate() {
            if text.trim().is_empty() {
                continue;
            }
            match parse_row(i + 1, text, &root) {
                Ok(row) => rows.push(row),
                Err((file_name, reason)) => {
                    let bad = BadRow {
                        metadata: path.to_path_buf(),
                        line: i + 1,
                        file_name,
                        reason,
                    };
                    skipped.0.push(bad.apply(policy)?);
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            root,
            rows,
            skipped,
        })
    }

    /// The path of `row`'s file.
    pub fn file_path(&self, row: &MetadataRow) -> PathBuf {
        self.root.join(&row.file_name)
    }

    /// Keeps the rows `check` accepts (given each row's file path and the row); a row it
    /// refuses becomes a bad row naming its file and the reason, skipped or fatal by `policy`.
    /// For checks of the files themselves (image or safetensors headers) when a dataset opens.
    pub fn retain_rows(
        &mut self,
        policy: BadRowPolicy,
        mut check: impl FnMut(&Path, &MetadataRow) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let mut good = Vec::with_capacity(self.rows.len());
        for row in std::mem::take(&mut self.rows) {
            match check(&self.file_path(&row), &row) {
                Ok(()) => good.push(row),
                Err(reason) => {
                    let bad = self.bad_row(&row, format!("{}: {reason}", row.file_name));
                    self.skipped.0.push(bad.apply(policy)?);
                }
            }
        }
        self.skipped.0.sort_by_key(|b| b.line);
        self.rows = good;
        Ok(())
    }

    /// A bad row for `row` (a problem found after parsing: an unreadable file, a wrong shape).
    pub fn bad_row(&self, row: &MetadataRow, reason: String) -> BadRow {
        BadRow {
            metadata: self.path.clone(),
            line: row.line,
            file_name: Some(row.file_name.clone()),
            reason,
        }
    }
}

type RowProblem = (Option<String>, String);

fn parse_row(line: usize, text: &str, root: &Path) -> std::result::Result<MetadataRow, RowProblem> {
    let raw: RawRow =
        serde_json::from_str(text).map_err(|e| (None, format!("invalid JSON: {e}")))?;
    let file_name = raw.file_name.unwrap_or_default();
    if file_name.trim().is_empty() {
        return Err((None, "missing or empty file_name".into()));
    }
    let bad = |reason: String| (Some(file_name.clone()), reason);
    let caption = raw.text.unwrap_or_default();
    if caption.trim().is_empty() {
        return Err(bad(format!("{file_name}: empty caption")));
    }
    if !root.join(&file_name).is_file() {
        return Err(bad(format!("missing file {file_name}")));
    }
    if let Some(nouns) = &raw.nouns {
        let caption_words = words(&caption);
        if let Some(noun) = nouns
            .iter()
            .find(|n| find_words(&caption_words, n).is_none())
        {
            return Err(bad(format!(
                "{file_name}: noun {noun:?} is not a whole word of the caption {caption:?}"
            )));
        }
    }
    if let Some(groups) = &raw.noun_tokens {
        if let Some(i) = groups.iter().position(Vec::is_empty) {
            return Err(bad(format!("{file_name}: noun_tokens[{i}] is empty")));
        }
        if let Some(nouns) = raw.nouns.as_ref().filter(|n| n.len() != groups.len()) {
            return Err(bad(format!(
                "{file_name}: {} nouns but {} noun_tokens groups (one group per noun)",
                nouns.len(),
                groups.len()
            )));
        }
    }
    Ok(MetadataRow {
        line,
        file_name,
        text: caption,
        nouns: raw.nouns,
        noun_tokens: raw.noun_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::TempDir;

    fn folder(lines: &[&str]) -> TempDir {
        let dir = TempDir::new("metadata");
        for f in ["a.png", "b.png", "c.png"] {
            dir.write(f, b"not read here");
        }
        dir.write("metadata.jsonl", lines.join("\n").as_bytes());
        dir
    }

    #[test]
    fn good_rows_keep_their_fields_and_line_numbers() {
        let dir = folder(&[
            r#"{"file_name": "a.png", "text": "a red cube", "extra": 3}"#,
            "",
            r#"{"file_name": "b.png", "text": "A Coffee cup, and a cat.", "nouns": ["coffee cup", "CAT"]}"#,
            r#"{"file_name": "c.png", "text": "a cat", "nouns": ["cat"], "noun_tokens": [[2]]}"#,
        ]);
        let m = Metadata::read(&dir.path("metadata.jsonl"), BadRowPolicy::Fail).unwrap();
        assert!(m.skipped.is_empty());
        let lines: Vec<usize> = m.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [1, 3, 4]);
        assert_eq!(m.rows[0].text, "a red cube");
        assert_eq!(m.rows[0].nouns, None);
        assert_eq!(
            m.rows[1].nouns.as_deref(),
            Some(&["coffee cup".to_string(), "CAT".to_string()][..])
        );
        assert_eq!(m.rows[2].noun_tokens, Some(vec![vec![2]]));
        assert_eq!(m.file_path(&m.rows[1]), dir.path("b.png"));
    }

    #[test]
    fn each_bad_row_is_skipped_with_its_line() {
        let dir = folder(&[
            r#"{"file_name": "a.png", "text": "a cube"}"#,
            r#"{"file_name": "missing.png", "text": "a cube"}"#,
            r#"{"file_name": "a.png", "text": "   "}"#,
            "",
            r#"{"file_name": "a.png", "text": "a cat", "nouns": ["ca"]}"#,
            r#"{"file_name": "a.png", "text": "a cat" "#,
            r#"{"text": "a cat"}"#,
            r#"{"file_name": "a.png", "text": "a cat", "noun_tokens": [[]]}"#,
            r#"{"file_name": "a.png", "text": "a cat", "nouns": ["cat"], "noun_tokens": [[2], [3]]}"#,
            r#"{"file_name": "b.png", "text": "a dog"}"#,
        ]);
        let path = dir.path("metadata.jsonl");
        let m = Metadata::read(&path, BadRowPolicy::Skip).unwrap();
        assert_eq!(m.rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 10]);
        let got: Vec<(usize, &str)> = m
            .skipped
            .0
            .iter()
            .map(|b| (b.line, b.reason.as_str()))
            .collect();
        assert_eq!(got[0], (2, "missing file missing.png"));
        assert_eq!(got[1], (3, "a.png: empty caption"));
        assert_eq!(
            got[2],
            (
                5,
                r#"a.png: noun "ca" is not a whole word of the caption "a cat""#
            )
        );
        assert_eq!(got[3].0, 6);
        assert!(got[3].1.starts_with("invalid JSON: "), "{}", got[3].1);
        assert_eq!(got[4], (7, "missing or empty file_name"));
        assert_eq!(got[5], (8, "a.png: noun_tokens[0] is empty"));
        assert_eq!(
            got[6],
            (
                9,
                "a.png: 1 nouns but 2 noun_tokens groups (one group per noun)"
            )
        );
        let summary = m.skipped.to_string();
        let first = format!(
            "skipped 7 rows: {}:2: missing file missing.png; ",
            path.display()
        );
        assert!(summary.starts_with(&first), "{summary}");
    }

    /// Editors on Windows start UTF-8 files with a byte-order mark; the first row still reads.
    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_row() {
        let dir = folder(&[r#"{"file_name": "a.png", "text": "a cube"}"#]);
        dir.write(
            "metadata.jsonl",
            "\u{feff}{\"file_name\": \"a.png\", \"text\": \"a cube\"}\n".as_bytes(),
        );
        let m = Metadata::read(&dir.path("metadata.jsonl"), BadRowPolicy::Fail).unwrap();
        assert_eq!((m.rows.len(), m.rows[0].text.as_str()), (1, "a cube"));
    }

    #[test]
    fn fail_names_the_file_and_line() {
        let dir = folder(&[
            r#"{"file_name": "a.png", "text": "a cube"}"#,
            "",
            r#"{"file_name": "gone.png", "text": "a cube"}"#,
        ]);
        let path = dir.path("metadata.jsonl");
        let err = Metadata::read(&path, BadRowPolicy::Fail).unwrap_err();
        assert!(matches!(err, Error::Data { line: 3, .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{}:3: missing file gone.png", path.display())
        );
    }

    #[test]
    fn a_missing_metadata_file_is_an_io_error_naming_it() {
        let dir = TempDir::new("metadata-missing");
        let err = Metadata::read(&dir.path("nope.jsonl"), BadRowPolicy::Skip).unwrap_err();
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
    }

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
    fn the_row_decides_the_nouns_variant() {
        assert_eq!(
            row(Some(&["cat"]), Some(vec![vec![2]])).nouns(),
            Nouns::Tokens(NounGroups(vec![vec![2]]))
        );
        assert_eq!(
            row(Some(&["cat"]), None).nouns(),
            Nouns::Words(vec!["cat".into()])
        );
        assert_eq!(row(None, None).nouns(), Nouns::Unmarked);
    }
}
