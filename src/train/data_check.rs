//! The whole dataset's captions checked against the text side before the first step, so a
//! caption the tokenizer rejects or a noun past the text's last position is reported by file
//! and line before any work, not when the step that reaches it runs.

use std::path::PathBuf;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use super::{TrainConfig, TrainInputs};
use crate::data::{BadRow, BadRows, Dataset, Subset};
use crate::error::{Error, Result};

/// Checks the caption of every sample of `dataset` with [`TrainInputs::check_caption`]. Under
/// [`BadRowPolicy::Skip`](crate::data::BadRowPolicy::Skip) the rows that fail are left out of
/// the returned subset and listed after those the dataset skipped when it opened, in line
/// order;
/// under [`BadRowPolicy::Fail`](crate::data::BadRowPolicy::Fail) the first one is an [`Error::Data`] naming the metadata file
/// and line. Samples without a metadata row (data made in memory) are kept unchecked.
pub(crate) fn check_captions<B, M, I, D>(
    dataset: Arc<D>,
    inputs: &I,
    config: &TrainConfig,
) -> Result<(Subset<D>, BadRows)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    I: TrainInputs<B, M> + ?Sized,
    D: Dataset,
{
    let metadata = dataset
        .source()
        .map_or_else(|| PathBuf::from("the data"), PathBuf::from);
    let mut keep = Vec::with_capacity(dataset.len());
    let mut skipped = dataset.skipped();
    for index in 0..dataset.len() {
        let Some(row) = dataset.row(index) else {
            keep.push(index);
            continue;
        };
        match inputs.check_caption(&row.text, &row.nouns(), config) {
            Ok(()) => keep.push(index),
            Err(error) => {
                let why = match error {
                    Error::Input(message) => message,
                    other => other.to_string(),
                };
                let bad = BadRow {
                    metadata: metadata.clone(),
                    line: row.line,
                    file_name: Some(row.file_name.clone()),
                    reason: match why.contains(&row.text) {
                        true => format!("{}: {why}; fix or remove that row", row.file_name),
                        false => format!(
                            "{}: caption {:?}: {why}; fix or remove that row",
                            row.file_name, row.text
                        ),
                    },
                };
                skipped.0.push(bad.apply(dataset.policy())?);
            }
        }
    }
    skipped.0.sort_by_key(|b| b.line);
    if keep.is_empty() && !dataset.is_empty() {
        return Err(Error::Config(format!(
            "{}: no caption the text encoder can take ({skipped})",
            metadata.display()
        )));
    }
    Ok((Subset::new(dataset, keep)?, skipped))
}
