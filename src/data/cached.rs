//! Cached features: one safetensors file per sample holding what the VAE and text encoder
//! would have produced, so training runs before the crate has either.
//!
//! Each `file_name` of `metadata.jsonl` is a `.safetensors` file with
//! - `latents` `[c, h, w]`: VAE latents, already multiplied by the VAE's scaling factor,
//! - `encoder_hidden_states` `[tokens, dim]`: the text encoder's per-token output,
//! - optionally `pooled_projections` `[dim]` (SD 3).
//!
//! Opening reads only each file's header and checks every file against the first readable one;
//! loading reads the whole file and checks it again.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::{
    BadRow, BadRowPolicy, BadRows, Dataset, Features, HostTensor, Metadata, MetadataRow, Sample,
};
use crate::error::{Error, Result};
use crate::weights::{TensorFile, write_tensor_file};

const LATENTS: &str = "latents";
const HIDDEN: &str = "encoder_hidden_states";
const POOLED: &str = "pooled_projections";

/// The shapes every sample of a [`CachedFeatures`] dataset shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureShapes {
    /// `latents`: `[c, h, w]`.
    pub latents: [usize; 3],
    /// `encoder_hidden_states`: `[tokens, dim]`.
    pub hidden: [usize; 2],
    /// `pooled_projections`: `[dim]`, when the files have it.
    pub pooled: Option<[usize; 1]>,
}

/// Precomputed latents and text embeddings listed by a `metadata.jsonl`.
#[derive(Debug, Clone)]
pub struct CachedFeatures {
    metadata: Metadata,
    shapes: FeatureShapes,
    policy: BadRowPolicy,
}

impl CachedFeatures {
    /// Reads `metadata` and every listed file's header: unreadable headers, tensors missing or
    /// shaped unlike the first readable file's, and `noun_tokens` beyond the text's tokens are
    /// bad rows.
    pub fn open(metadata: &Path, policy: BadRowPolicy) -> Result<Self> {
        let mut metadata = Metadata::read(metadata, policy)?;
        let mut shapes: Option<FeatureShapes> = None;
        metadata.retain_rows(policy, |path, row| {
            header_shapes(path).and_then(|found| check_row(row, found, shapes.get_or_insert(found)))
        })?;
        let shapes = shapes.ok_or_else(|| {
            Error::Config(format!(
                "{}: no usable sample ({})",
                metadata.path.display(),
                metadata.skipped
            ))
        })?;
        Ok(Self {
            metadata,
            shapes,
            policy,
        })
    }

    /// The shapes every sample has.
    pub fn shapes(&self) -> FeatureShapes {
        self.shapes
    }

    /// The parsed metadata (good rows).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Rows left out when the dataset was opened.
    pub fn skipped(&self) -> &BadRows {
        &self.metadata.skipped
    }
}

impl Dataset for CachedFeatures {
    fn len(&self) -> usize {
        self.metadata.rows.len()
    }

    fn cached_features(&self) -> bool {
        true
    }

    fn policy(&self) -> BadRowPolicy {
        self.policy
    }

    fn source(&self) -> Option<&Path> {
        Some(&self.metadata.path)
    }

    fn row(&self, index: usize) -> Option<&MetadataRow> {
        self.metadata.rows.get(index)
    }

    fn skipped(&self) -> BadRows {
        self.metadata.skipped.clone()
    }

    fn load(&self, index: usize) -> std::result::Result<Sample, BadRow> {
        let row = &self.metadata.rows[index];
        let bad = |reason: String| {
            self.metadata
                .bad_row(row, format!("{}: {reason}", row.file_name))
        };
        let file = TensorFile::read(&self.metadata.file_path(row))
            .map_err(|e| self.metadata.bad_row(row, e.to_string()))?;
        let mut tensors = file.tensors;
        check_row(row, file_shapes(&tensors).map_err(bad)?, &self.shapes).map_err(bad)?;
        // Present and of the checked shapes: `check_row` passed.
        let mut take = |key: &str| tensors.remove(key).map(|(_, v)| v).unwrap_or_default();
        let (latents, hidden, pooled) = (take(LATENTS), take(HIDDEN), take(POOLED));
        let array = |e: Error| bad(e.to_string());
        Ok(Sample {
            index,
            line: row.line,
            caption: row.text.clone(),
            nouns: row.nouns(),
            features: Features::Cached {
                latents: HostTensor::new(self.shapes.latents, latents).map_err(array)?,
                hidden: HostTensor::new(self.shapes.hidden, hidden).map_err(array)?,
                pooled: match self.shapes.pooled {
                    Some(shape) => Some(HostTensor::new(shape, pooled).map_err(array)?),
                    None => None,
                },
            },
        })
    }
}

/// Writes one sample's features to `path` (atomically) in the layout [`CachedFeatures`] reads.
pub fn write_cached_sample(
    path: &Path,
    latents: &HostTensor<3>,
    hidden: &HostTensor<2>,
    pooled: Option<&HostTensor<1>>,
) -> Result<()> {
    let mut tensors = BTreeMap::new();
    tensors.insert(
        LATENTS.into(),
        (latents.shape.to_vec(), latents.values.clone()),
    );
    tensors.insert(
        HIDDEN.into(),
        (hidden.shape.to_vec(), hidden.values.clone()),
    );
    if let Some(p) = pooled {
        tensors.insert(POOLED.into(), (p.shape.to_vec(), p.values.clone()));
    }
    write_tensor_file(path, &tensors, None)
}

/// Checks `found` against `expected` and the row's `noun_tokens` against the token count.
fn check_row(
    row: &MetadataRow,
    found: FeatureShapes,
    expected: &FeatureShapes,
) -> std::result::Result<(), String> {
    let differ = |key: &str, got: &[usize], want: &[usize]| {
        format!("tensor {key:?} has shape {got:?}, but the first file's is {want:?}")
    };
    if found.latents != expected.latents {
        return Err(differ(LATENTS, &found.latents, &expected.latents));
    }
    if found.hidden != expected.hidden {
        return Err(differ(HIDDEN, &found.hidden, &expected.hidden));
    }
    match (found.pooled, expected.pooled) {
        (Some(got), Some(want)) if got != want => return Err(differ(POOLED, &got, &want)),
        (None, Some(_)) => return Err(format!("no tensor {POOLED:?}, but the first file has one")),
        (Some(_), None) => return Err(format!("tensor {POOLED:?}, but the first file has none")),
        _ => {}
    }
    let tokens = found.hidden[0];
    for (i, group) in row.noun_tokens.iter().flatten().enumerate() {
        if let Some(p) = group.iter().find(|&&p| p >= tokens) {
            return Err(format!(
                "noun_tokens[{i}] holds position {p}, but {HIDDEN:?} has {tokens} tokens"
            ));
        }
    }
    Ok(())
}

/// The feature shapes named in the header of the safetensors file at `path`.
fn header_shapes(path: &Path) -> std::result::Result<FeatureShapes, String> {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        let mut len = [0; 8];
        file.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len > 100 << 20 {
            return Err(std::io::Error::other(format!("header of {len} bytes")));
        }
        let mut header = vec![0; len as usize];
        file.read_exact(&mut header)?;
        Ok(header)
    };
    let header = read().map_err(|e| format!("not a safetensors file: {e}"))?;
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| format!("not a safetensors file: bad header: {e}"))?;
    let shapes = header
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .map(|(k, v)| {
            let shape = v
                .get("shape")
                .and_then(|s| serde_json::from_value::<Vec<usize>>(s.clone()).ok())
                .ok_or_else(|| format!("not a safetensors file: tensor {k:?} has no shape"))?;
            Ok((k.clone(), (shape, Vec::new())))
        })
        .collect::<std::result::Result<BTreeMap<_, _>, String>>()?;
    file_shapes(&shapes)
}

/// The feature shapes of a file's tensors, each checked for its number of dimensions.
fn file_shapes(
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> std::result::Result<FeatureShapes, String> {
    fn dims<const D: usize>(
        tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
        key: &str,
        what: &str,
    ) -> std::result::Result<Option<[usize; D]>, String> {
        let Some((shape, _)) = tensors.get(key) else {
            return Ok(None);
        };
        <[usize; D]>::try_from(shape.as_slice())
            .map(Some)
            .map_err(|_| format!("tensor {key:?} has shape {shape:?}, expected {what}"))
    }
    let missing = |key: &str| {
        let have: Vec<&str> = tensors.keys().map(String::as_str).collect();
        format!("no tensor {key:?} (it has: {})", have.join(", "))
    };
    Ok(FeatureShapes {
        latents: dims(tensors, LATENTS, "[c, h, w]")?.ok_or_else(|| missing(LATENTS))?,
        hidden: dims(tensors, HIDDEN, "[tokens, dim]")?.ok_or_else(|| missing(HIDDEN))?,
        pooled: dims(tensors, POOLED, "[dim]")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{TempDir, cached_sample};
    use crate::nouns::Nouns;

    /// Writes `cached_sample(i)` as `<i>.safetensors` for each `i`, and a metadata line each.
    fn dataset(dir: &TempDir, samples: &[usize], extra_lines: &[&str]) {
        let mut lines = Vec::new();
        for &i in samples {
            let Features::Cached {
                latents,
                hidden,
                pooled,
            } = cached_sample(i, true).features
            else {
                unreachable!()
            };
            write_cached_sample(
                &dir.path(&format!("{i}.safetensors")),
                &latents,
                &hidden,
                pooled.as_ref(),
            )
            .unwrap();
            lines.push(format!(
                r#"{{"file_name": "{i}.safetensors", "text": "a cat", "nouns": ["cat"], "noun_tokens": [[2]]}}"#
            ));
        }
        lines.extend(extra_lines.iter().map(|s| s.to_string()));
        dir.write("metadata.jsonl", lines.join("\n").as_bytes());
    }

    #[test]
    fn written_samples_read_back_unchanged() {
        let dir = TempDir::new("cached-roundtrip");
        dataset(&dir, &[3, 5], &[]);
        let data = CachedFeatures::open(&dir.path("metadata.jsonl"), BadRowPolicy::Fail).unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(
            data.shapes(),
            FeatureShapes {
                latents: [2, 3, 4],
                hidden: [5, 6],
                pooled: Some([6]),
            }
        );
        let got = data.load(1).unwrap();
        let want = cached_sample(5, true);
        assert_eq!(got.features, want.features);
        assert_eq!((got.index, got.line), (1, 2));
        assert_eq!(
            got.nouns,
            Nouns::Tokens(crate::nouns::NounGroups(vec![vec![2]]))
        );
    }

    #[test]
    fn a_shape_mismatch_names_the_line_file_key_and_shapes() {
        let dir = TempDir::new("cached-mismatch");
        dataset(
            &dir,
            &[0],
            &[r#"{"file_name": "odd.safetensors", "text": "a dog"}"#],
        );
        let latents = HostTensor::new([2, 3, 5], vec![0.0; 30]).unwrap();
        let hidden = HostTensor::new([5, 6], vec![0.0; 30]).unwrap();
        let pooled = HostTensor::new([6], vec![0.0; 6]).unwrap();
        write_cached_sample(
            &dir.path("odd.safetensors"),
            &latents,
            &hidden,
            Some(&pooled),
        )
        .unwrap();
        let path = dir.path("metadata.jsonl");
        let err = CachedFeatures::open(&path, BadRowPolicy::Fail).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: odd.safetensors: tensor \"latents\" has shape [2, 3, 5], but the first \
                 file's is [2, 3, 4]",
                path.display()
            )
        );
        let data = CachedFeatures::open(&path, BadRowPolicy::Skip).unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data.skipped().0[0].line, 2);
    }

    #[test]
    fn missing_keys_garbage_files_and_far_noun_tokens_are_bad_rows() {
        let dir = TempDir::new("cached-bad");
        dataset(
            &dir,
            &[0],
            &[
                r#"{"file_name": "garbage.safetensors", "text": "a dog"}"#,
                r#"{"file_name": "0.safetensors", "text": "a cat", "noun_tokens": [[1], [5]]}"#,
                r#"{"file_name": "nopool.safetensors", "text": "a dog"}"#,
            ],
        );
        dir.write("garbage.safetensors", b"\x05");
        let latents = HostTensor::new([2, 3, 4], vec![0.0; 24]).unwrap();
        let hidden = HostTensor::new([5, 6], vec![0.0; 30]).unwrap();
        write_cached_sample(&dir.path("nopool.safetensors"), &latents, &hidden, None).unwrap();
        let data = CachedFeatures::open(&dir.path("metadata.jsonl"), BadRowPolicy::Skip).unwrap();
        assert_eq!(data.len(), 1);
        let reasons: Vec<(usize, &str)> = data
            .skipped()
            .0
            .iter()
            .map(|b| (b.line, b.reason.as_str()))
            .collect();
        assert_eq!(reasons[0].0, 2);
        assert!(
            reasons[0]
                .1
                .starts_with("garbage.safetensors: not a safetensors file"),
            "{}",
            reasons[0].1
        );
        assert_eq!(
            reasons[1],
            (
                3,
                "0.safetensors: noun_tokens[1] holds position 5, but \
                 \"encoder_hidden_states\" has 5 tokens"
            )
        );
        assert_eq!(
            reasons[2],
            (
                4,
                "nopool.safetensors: no tensor \"pooled_projections\", but the first file has one"
            )
        );
    }

    #[test]
    fn a_file_broken_after_opening_is_a_bad_row_at_load_time() {
        let dir = TempDir::new("cached-late");
        dataset(&dir, &[0, 1], &[]);
        let data = CachedFeatures::open(&dir.path("metadata.jsonl"), BadRowPolicy::Skip).unwrap();
        dir.write("1.safetensors", b"truncated");
        let bad = data.load(1).unwrap_err();
        assert_eq!(bad.line, 2);
        assert!(bad.reason.contains("1.safetensors"), "{}", bad.reason);
        assert!(data.load(0).is_ok());
    }
}
