//! [`TrainingData`]: a training folder of either kind, told apart by its `metadata.jsonl`.

use std::path::Path;

use super::{
    BadRow, BadRowPolicy, BadRows, CachedFeatures, Dataset, ImageFolder, MetadataRow, Sample,
};
use crate::error::{Error, Result};

/// The samples of a `metadata.jsonl` folder: images, encoded by a pipeline during training, or
/// cached features (latents and text embeddings computed beforehand, one `.safetensors` file
/// per sample).
#[derive(Debug)]
pub enum TrainingData {
    /// Images resized and centre-cropped to a square.
    Images(ImageFolder),
    /// Cached features.
    Cached(CachedFeatures),
}

impl TrainingData {
    /// Opens `metadata` (a `metadata.jsonl`): cached features when its first row names a
    /// `.safetensors` file, else images of `resolution` pixels a side.
    pub fn open(metadata: &Path, resolution: u32, policy: BadRowPolicy) -> Result<Self> {
        if lists_cached_features(metadata)? {
            Ok(Self::Cached(CachedFeatures::open(metadata, policy)?))
        } else {
            Ok(Self::Images(ImageFolder::open(
                metadata, resolution, policy,
            )?))
        }
    }

    /// The rows left out when the folder was opened.
    pub fn skipped(&self) -> &BadRows {
        match self {
            Self::Images(d) => d.skipped(),
            Self::Cached(d) => d.skipped(),
        }
    }
}

/// Whether the first non-blank row of `metadata` names a `.safetensors` file.
fn lists_cached_features(metadata: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(metadata).map_err(|e| Error::io(metadata, e))?;
    let Some(first) = text.lines().find(|l| !l.trim().is_empty()) else {
        return Ok(false);
    };
    let row: serde_json::Value = serde_json::from_str(first.trim_start_matches('\u{feff}'))
        .map_err(|error| Error::Json {
            path: metadata.to_path_buf(),
            error,
        })?;
    Ok(row["file_name"]
        .as_str()
        .is_some_and(|f| f.ends_with(".safetensors")))
}

impl Dataset for TrainingData {
    fn len(&self) -> usize {
        match self {
            Self::Images(d) => d.len(),
            Self::Cached(d) => d.len(),
        }
    }

    fn cached_features(&self) -> bool {
        matches!(self, Self::Cached(_))
    }

    fn policy(&self) -> BadRowPolicy {
        match self {
            Self::Images(d) => d.policy(),
            Self::Cached(d) => d.policy(),
        }
    }

    fn load(&self, index: usize) -> std::result::Result<Sample, BadRow> {
        match self {
            Self::Images(d) => d.load(index),
            Self::Cached(d) => d.load(index),
        }
    }

    fn source(&self) -> Option<&std::path::Path> {
        match self {
            Self::Images(d) => d.source(),
            Self::Cached(d) => d.source(),
        }
    }

    fn row(&self, index: usize) -> Option<&MetadataRow> {
        match self {
            Self::Images(d) => d.row(index),
            Self::Cached(d) => d.row(index),
        }
    }

    fn skipped(&self) -> BadRows {
        TrainingData::skipped(self).clone()
    }
}
