//! A CPU-side batch, and its conversion to burn tensors on the training device.

use burn::tensor::{Tensor, backend::Backend};

use super::{BadRows, DataCursor, Features, HostTensor, Sample};
use crate::calibration::TrainBatch;
use crate::denoiser::TextCond;
use crate::error::{Error, Result};
use crate::nouns::NounGroups;
use crate::nouns::Nouns;
use crate::nouns::{CountedTokens, WordTokens};

/// The stacked features of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchFeatures {
    /// Images `[batch, 3, r, r]` in `[-1, 1]`.
    Pixels(HostTensor<4>),
    /// Precomputed model inputs.
    Cached {
        /// Latents `[batch, c, h, w]`, already scaled.
        latents: HostTensor<4>,
        /// Text hidden states `[batch, tokens, dim]`.
        hidden: HostTensor<3>,
        /// Pooled text embeddings `[batch, dim]`, when the dataset has them.
        pooled: Option<HostTensor<2>>,
    },
}

/// A batch as the loader hands it over: CPU arrays plus what each sample is.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Dataset index of each sample.
    pub indices: Vec<usize>,
    /// Metadata line of each sample.
    pub lines: Vec<usize>,
    /// Caption of each sample.
    pub captions: Vec<String>,
    /// Nouns of each sample, as its row gives them.
    pub nouns: Vec<Nouns>,
    /// The stacked pixels or features.
    pub features: BatchFeatures,
    /// The epoch the batch belongs to.
    pub epoch: u64,
    /// The cursor just after this batch: save it with a checkpoint taken after training on it.
    pub next_cursor: DataCursor,
    /// Samples found bad (and skipped) while this batch was built.
    pub skipped: BadRows,
}

impl Batch {
    /// Stacks `samples` (all pixels or all cached features of one shape).
    pub fn collate(
        samples: Vec<Sample>,
        epoch: u64,
        next_cursor: DataCursor,
        skipped: BadRows,
    ) -> Result<Self> {
        let features = stack_features(&samples)?;
        let mut batch = Batch {
            indices: Vec::with_capacity(samples.len()),
            lines: Vec::with_capacity(samples.len()),
            captions: Vec::with_capacity(samples.len()),
            nouns: Vec::with_capacity(samples.len()),
            features,
            epoch,
            next_cursor,
            skipped,
        };
        for s in samples {
            batch.indices.push(s.index);
            batch.lines.push(s.line);
            batch.captions.push(s.caption);
            batch.nouns.push(s.nouns);
        }
        Ok(batch)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch has no sample (never true for a batch from the loader).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Samples `rows` of the batch (a data-parallel peer's share), with the batch's epoch,
    /// cursor and skipped rows; `rows` must lie within the batch.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Self> {
        let features = match &self.features {
            BatchFeatures::Pixels(p) => BatchFeatures::Pixels(p.rows(rows.clone())?),
            BatchFeatures::Cached {
                latents,
                hidden,
                pooled,
            } => BatchFeatures::Cached {
                latents: latents.rows(rows.clone())?,
                hidden: hidden.rows(rows.clone())?,
                pooled: pooled.as_ref().map(|p| p.rows(rows.clone())).transpose()?,
            },
        };
        Ok(Batch {
            indices: self.indices[rows.clone()].to_vec(),
            lines: self.lines[rows.clone()].to_vec(),
            captions: self.captions[rows.clone()].to_vec(),
            nouns: self.nouns[rows].to_vec(),
            features,
            epoch: self.epoch,
            next_cursor: self.next_cursor,
            skipped: self.skipped.clone(),
        })
    }

    /// The images `[batch, 3, r, r]` on `device`; an error for cached features.
    pub fn pixels<B: Backend>(&self, device: &B::Device) -> Result<Tensor<B, 4>> {
        match &self.features {
            BatchFeatures::Pixels(p) => Ok(p.to_tensor(device)),
            BatchFeatures::Cached { .. } => Err(Error::Input(
                "the batch holds cached latents, not pixels".into(),
            )),
        }
    }

    /// The latents `[batch, c, h, w]` on `device`; an error for images (encode them first).
    pub fn latents<B: Backend>(&self, device: &B::Device) -> Result<Tensor<B, 4>> {
        match &self.features {
            BatchFeatures::Cached { latents, .. } => Ok(latents.to_tensor(device)),
            BatchFeatures::Pixels(_) => Err(Error::Input(
                "the batch holds pixels, not latents: encode them with a VAE first".into(),
            )),
        }
    }

    /// The text conditioning on `device`; an error for images (no cached embeddings).
    pub fn text_cond<B: Backend>(&self, device: &B::Device) -> Result<TextCond<B>> {
        match &self.features {
            BatchFeatures::Cached { hidden, pooled, .. } => Ok(TextCond {
                hidden: hidden.to_tensor(device),
                pooled: pooled.as_ref().map(|p| p.to_tensor(device)),
            }),
            BatchFeatures::Pixels(_) => Err(Error::Input(
                "the batch holds captions, not text embeddings: encode them first".into(),
            )),
        }
    }

    /// Noun token groups of each sample ([`Nouns::groups`] with the tokenizer's
    /// `tokens_of`).
    pub fn noun_groups(&self, tokens_of: impl Fn(&str) -> usize) -> Result<Vec<NounGroups>> {
        self.noun_groups_with(&CountedTokens(tokens_of))
    }

    /// Noun token groups of each sample ([`Nouns::groups_with`]: exact positions with a
    /// tokenizer such as [`ClipTokenizer`](crate::text::ClipTokenizer)).
    pub fn noun_groups_with(&self, word_tokens: &dyn WordTokens) -> Result<Vec<NounGroups>> {
        self.nouns
            .iter()
            .zip(&self.captions)
            .zip(&self.lines)
            .map(|((nouns, caption), line)| {
                nouns
                    .groups_with(caption, word_tokens)
                    .map_err(|e| at_line(*line, e))
            })
            .collect()
    }

    /// [`noun_groups_with`](Self::noun_groups_with), each group checked to fall within a text of
    /// `tokens` tokens; an error names the metadata line.
    pub fn checked_noun_groups(
        &self,
        word_tokens: &dyn WordTokens,
        tokens: usize,
    ) -> Result<Vec<NounGroups>> {
        let nouns = self.noun_groups_with(word_tokens)?;
        for (i, groups) in nouns.iter().enumerate() {
            groups
                .check(i, tokens)
                .map_err(|e| at_line(self.lines[i], e))?;
        }
        Ok(nouns)
    }

    /// The [`TrainBatch`] of a cached-features batch on `device`, noun groups checked against
    /// the number of text tokens.
    pub fn train_batch<B: Backend>(
        &self,
        device: &B::Device,
        tokens_of: impl Fn(&str) -> usize,
    ) -> Result<TrainBatch<B>> {
        self.train_batch_with(device, &CountedTokens(tokens_of))
    }

    /// [`train_batch`](Self::train_batch) with each word's token positions from
    /// `word_tokens` ([`noun_groups_with`](Self::noun_groups_with)).
    pub fn train_batch_with<B: Backend>(
        &self,
        device: &B::Device,
        word_tokens: &dyn WordTokens,
    ) -> Result<TrainBatch<B>> {
        let latents = self.latents(device)?;
        let cond = self.text_cond(device)?;
        let [_, tokens, _] = cond.hidden.dims();
        let nouns = self.checked_noun_groups(word_tokens, tokens)?;
        Ok(TrainBatch {
            latents,
            cond,
            nouns,
            teacher: None,
        })
    }
}

/// `error` prefixed with the metadata line of the sample at fault.
fn at_line(line: usize, error: Error) -> Error {
    match error {
        Error::Input(message) => Error::Input(format!("metadata line {line}: {message}")),
        other => other,
    }
}

fn stack_features(samples: &[Sample]) -> Result<BatchFeatures> {
    let mismatch = || Error::Input("a batch mixes pixels and cached features".into());
    let Some(first) = samples.first() else {
        return Err(Error::Input("an empty batch".into()));
    };
    Ok(match &first.features {
        Features::Pixels(_) => {
            let pixels = samples
                .iter()
                .map(|s| match &s.features {
                    Features::Pixels(p) => Ok(p),
                    Features::Cached { .. } => Err(mismatch()),
                })
                .collect::<Result<Vec<_>>>()?;
            BatchFeatures::Pixels(HostTensor::stack(&pixels)?)
        }
        Features::Cached { pooled, .. } => {
            let with_pooled = pooled.is_some();
            let (mut latents, mut hidden, mut pools) = (Vec::new(), Vec::new(), Vec::new());
            for s in samples {
                let Features::Cached {
                    latents: l,
                    hidden: h,
                    pooled: p,
                } = &s.features
                else {
                    return Err(mismatch());
                };
                if p.is_some() != with_pooled {
                    return Err(Error::Input(format!(
                        "metadata line {}: pooled_projections present in some samples only",
                        s.line
                    )));
                }
                latents.push(l);
                hidden.push(h);
                pools.extend(p);
            }
            BatchFeatures::Cached {
                latents: HostTensor::stack(&latents)?,
                hidden: HostTensor::stack(&hidden)?,
                pooled: if with_pooled {
                    Some(HostTensor::stack(&pools)?)
                } else {
                    None
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use crate::data::test_util::cached_sample;

    #[test]
    fn cached_samples_become_a_train_batch() {
        let mut a = cached_sample(4, true);
        a.nouns = Nouns::Tokens(NounGroups(vec![vec![1, 2]]));
        let mut b = cached_sample(9, true);
        b.caption = "a red cat".into();
        b.nouns = Nouns::Words(vec!["cat".into()]);
        let batch = Batch::collate(
            vec![a.clone(), b],
            0,
            DataCursor::start(0, 10),
            BadRows::default(),
        )
        .unwrap();
        assert_eq!(batch.indices, [4, 9]);
        let device = Default::default();
        let tb = batch.train_batch::<TestBackend>(&device, |_| 1).unwrap();
        assert_eq!(tb.latents.dims(), [2, 2, 3, 4]);
        assert_eq!(tb.cond.hidden.dims(), [2, 5, 6]);
        assert_eq!(tb.cond.pooled.as_ref().unwrap().dims(), [2, 6]);
        assert_eq!(tb.nouns[1], NounGroups(vec![vec![3]]));
        // The second sample's latents follow the first's, value for value.
        let Features::Cached { latents, .. } = &a.features else {
            unreachable!()
        };
        let got = tb.latents.into_data().convert::<f32>().to_vec::<f32>();
        assert_eq!(got.unwrap()[..24], latents.values[..]);
        assert!(batch.pixels::<TestBackend>(&device).is_err());
    }

    #[test]
    fn rows_of_a_batch_are_the_batch_of_those_samples() {
        let samples: Vec<Sample> = [3, 5, 8, 13]
            .into_iter()
            .map(|i| cached_sample(i, true))
            .collect();
        let cursor = DataCursor::start(0, 20);
        let whole = Batch::collate(samples.clone(), 2, cursor, BadRows::default()).unwrap();
        let part = Batch::collate(samples[1..3].to_vec(), 2, cursor, BadRows::default()).unwrap();
        assert_eq!(whole.rows(1..3).unwrap(), part);
        assert_eq!(whole.rows(0..4).unwrap(), whole);
        let err = whole.rows(3..5).unwrap_err();
        assert!(err.to_string().contains("rows 3..5"), "{err}");
    }

    #[test]
    fn noun_positions_beyond_the_text_name_the_line() {
        let mut a = cached_sample(0, false);
        a.nouns = Nouns::Tokens(NounGroups(vec![vec![5]]));
        a.line = 12;
        let batch =
            Batch::collate(vec![a], 0, DataCursor::start(0, 1), BadRows::default()).unwrap();
        let err = batch
            .train_batch::<TestBackend>(&Default::default(), |_| 1)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("metadata line 12: sample 0: noun 0"),
            "{err}"
        );
    }

    #[test]
    fn mixed_pooled_presence_is_refused() {
        let err = Batch::collate(
            vec![cached_sample(0, true), cached_sample(1, false)],
            0,
            DataCursor::start(0, 2),
            BadRows::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("pooled_projections"), "{err}");
    }
}
