//! [`DataFingerprint`]: what a run's data was, kept in each checkpoint, so that resuming on a
//! dataset changed under the run is refused with a message saying what changed (the data
//! order and cursor of a checkpoint only mean something for the data they were made on).

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Dataset;

/// The usable samples of a dataset, summarised: their count, a hash of their metadata rows and
/// a hash of their files' names and sizes. File contents are not read (a dataset of images
/// would take minutes); a file replaced by one of the same size goes unnoticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// Number of usable samples.
    pub samples: usize,
    /// SHA-256 (hex) of each usable row's line number, `file_name`, caption and nouns, in order.
    pub rows: String,
    /// SHA-256 (hex) of each usable sample file's name and size in bytes, in order.
    pub files: String,
}

impl DataFingerprint {
    /// The fingerprint of `dataset`'s usable samples; `None` for data without metadata rows
    /// (made in memory).
    pub fn of(dataset: &(impl Dataset + ?Sized)) -> Option<Self> {
        let root = dataset.source()?.parent().unwrap_or(Path::new(""));
        let (mut rows, mut files) = (Sha256::new(), Sha256::new());
        for index in 0..dataset.len() {
            let row = dataset.row(index)?;
            let nouns = serde_json::json!([row.nouns, row.noun_tokens]);
            for part in [
                &row.line.to_string(),
                &row.file_name,
                &row.text,
                &nouns.to_string(),
            ] {
                // Length-prefixed, so no two different rows hash the same bytes.
                rows.update((part.len() as u64).to_le_bytes());
                rows.update(part.as_bytes());
            }
            let size = std::fs::metadata(root.join(&row.file_name)).map_or(u64::MAX, |m| m.len());
            files.update((row.file_name.len() as u64).to_le_bytes());
            files.update(row.file_name.as_bytes());
            files.update(size.to_le_bytes());
        }
        Some(Self {
            samples: dataset.len(),
            rows: hex(&rows.finalize()),
            files: hex(&files.finalize()),
        })
    }

    /// What differs between `self` (a checkpoint's) and `now`, in words; `None` when nothing.
    pub fn changes(&self, now: &Self) -> Option<String> {
        let mut changes = Vec::new();
        if self.samples != now.samples {
            changes.push(format!(
                "it had {} usable samples, now {}",
                self.samples, now.samples
            ));
        } else if self.rows != now.rows {
            changes.push("a row's caption, nouns, file name or line differs".to_string());
        }
        if self.samples == now.samples && self.files != now.files {
            changes.push("a sample file changed size".to_string());
        }
        (!changes.is_empty()).then(|| changes.join("; "))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::TempDir;
    use crate::data::{BadRowPolicy, ImageFolder};
    use image::{Rgb, RgbImage};

    fn fingerprint(dir: &TempDir) -> DataFingerprint {
        let folder = ImageFolder::open(&dir.path("metadata.jsonl"), 2, BadRowPolicy::Skip).unwrap();
        DataFingerprint::of(&folder).unwrap()
    }

    #[test]
    fn each_kind_of_change_is_told_apart() {
        let dir = TempDir::new("fingerprint");
        for i in 0..3u8 {
            RgbImage::from_pixel(2, 2, Rgb([i, 0, 0]))
                .save(dir.path(&format!("{i}.png")))
                .unwrap();
        }
        let rows = |third: &str| {
            format!(
                "{{\"file_name\": \"0.png\", \"text\": \"a red square\"}}\n\
                 {{\"file_name\": \"1.png\", \"text\": \"a blue circle\", \"nouns\": [\"circle\"]}}\n\
                 {third}"
            )
        };
        dir.write("metadata.jsonl", rows("").as_bytes());
        let first = fingerprint(&dir);
        assert_eq!(first.samples, 2);
        assert_eq!(first.rows.len(), 64);
        assert_eq!(
            fingerprint(&dir),
            first,
            "the same data, the same fingerprint"
        );
        assert_eq!(first.changes(&first), None);

        // A row added (a row whose file is missing is skipped: no change).
        dir.write(
            "metadata.jsonl",
            rows("{\"file_name\": \"gone.png\", \"text\": \"a cat\"}\n").as_bytes(),
        );
        assert_eq!(fingerprint(&dir), first);
        dir.write(
            "metadata.jsonl",
            rows("{\"file_name\": \"2.png\", \"text\": \"a cat\"}\n").as_bytes(),
        );
        let msg = first.changes(&fingerprint(&dir)).unwrap();
        assert_eq!(msg, "it had 2 usable samples, now 3");

        // A caption edited.
        dir.write(
            "metadata.jsonl",
            rows("").replace("blue", "green").as_bytes(),
        );
        let msg = first.changes(&fingerprint(&dir)).unwrap();
        assert!(msg.starts_with("a row's caption"), "{msg}");

        // A file replaced by one of another size.
        dir.write("metadata.jsonl", rows("").as_bytes());
        RgbImage::from_pixel(3, 3, Rgb([9, 9, 9]))
            .save(dir.path("1.png"))
            .unwrap();
        let msg = first.changes(&fingerprint(&dir)).unwrap();
        assert_eq!(msg, "a sample file changed size");
    }
}
