//! [`Subset`]: some of another dataset's samples, in the order given; what a run trains on
//! after the rows its checks left out.

use std::path::Path;
use std::sync::Arc;

use super::{BadRow, BadRowPolicy, BadRows, Dataset, MetadataRow, Sample};
use crate::error::{Error, Result};

/// The samples `indices` of `inner`, renumbered `0..indices.len()`.
#[derive(Debug)]
pub struct Subset<D> {
    inner: Arc<D>,
    indices: Vec<usize>,
}

impl<D: Dataset> Subset<D> {
    /// The samples `indices` of `inner`; an index past its end is an error.
    pub fn new(inner: Arc<D>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&i) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(Error::Input(format!(
                "subset index {i} of a dataset of {} samples",
                inner.len()
            )));
        }
        Ok(Self { inner, indices })
    }

    /// Every sample of `inner`.
    pub fn all(inner: Arc<D>) -> Self {
        let indices = (0..inner.len()).collect();
        Self { inner, indices }
    }

    /// The index in the inner dataset of each sample.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl<D: Dataset> Dataset for Subset<D> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn policy(&self) -> BadRowPolicy {
        self.inner.policy()
    }

    /// The inner sample, numbered as in the subset.
    fn load(&self, index: usize) -> std::result::Result<Sample, BadRow> {
        let mut sample = self.inner.load(self.indices[index])?;
        sample.index = index;
        Ok(sample)
    }

    fn source(&self) -> Option<&Path> {
        self.inner.source()
    }

    fn cached_features(&self) -> bool {
        self.inner.cached_features()
    }

    fn row(&self, index: usize) -> Option<&MetadataRow> {
        self.inner.row(self.indices[index])
    }

    /// The inner dataset's (the rows a subset leaves out are its maker's to report).
    fn skipped(&self) -> BadRows {
        self.inner.skipped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::TempDir;
    use crate::data::{ImageFolder, load_image};
    use image::{Rgb, RgbImage};

    #[test]
    fn a_subset_renumbers_the_samples_it_keeps() {
        let dir = TempDir::new("subset");
        let mut rows = String::new();
        for (i, shade) in [10u8, 20, 30].into_iter().enumerate() {
            RgbImage::from_pixel(2, 2, Rgb([shade, 0, 0]))
                .save(dir.path(&format!("{i}.png")))
                .unwrap();
            rows += &format!("{{\"file_name\": \"{i}.png\", \"text\": \"image {i}\"}}\n");
        }
        dir.write("metadata.jsonl", rows.as_bytes());
        let folder = ImageFolder::open(&dir.path("metadata.jsonl"), 2, BadRowPolicy::Fail).unwrap();
        let subset = Subset::new(Arc::new(folder), vec![2, 0]).unwrap();
        assert_eq!(subset.len(), 2);
        let first = subset.load(0).unwrap();
        assert_eq!(
            (first.index, first.line, first.caption.as_str()),
            (0, 3, "image 2")
        );
        assert_eq!(subset.row(1).unwrap().file_name, "0.png");
        let super::super::Features::Pixels(p) = first.features else {
            panic!("pixels expected")
        };
        assert_eq!(p.values, load_image(&dir.path("2.png"), 2).unwrap().values);
        let inner = Arc::new(
            ImageFolder::open(&dir.path("metadata.jsonl"), 2, BadRowPolicy::Fail).unwrap(),
        );
        let err = Subset::new(inner, vec![3]).unwrap_err().to_string();
        assert!(
            err.contains("index 3") && err.contains("3 samples"),
            "{err}"
        );
    }
}
