//! Scenes ready for training and measuring: pixels in `[-1, 1]`, token ids, noun token
//! positions and each noun's coverage mask, kept on the host and batched on demand.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::render::render;
use super::scene::Scene;
use ctcal::data::{BadRow, BadRowPolicy, Dataset, Features, HostTensor, Sample};
use ctcal::error::Error;
use ctcal::nouns::{NounGroups, Nouns};
use ctcal::pipeline::shapes::Vocab;

/// A rendered split.
#[derive(Debug, Clone)]
pub struct ShapesSet {
    /// Image side in pixels.
    pub size: usize,
    /// The scenes.
    pub scenes: Vec<Scene>,
    /// Per scene, `3 * size * size` values in `[-1, 1]` (CHW).
    pub pixels: Vec<Vec<f32>>,
    /// Per scene, the encoded caption.
    pub ids: Vec<Vec<usize>>,
    /// Per scene, each noun's token positions.
    pub nouns: Vec<NounGroups>,
    /// Per scene, each noun's coverage mask (`size * size`, union of the objects it names).
    pub masks: Vec<Vec<Vec<f32>>>,
    /// The ids of the empty caption (for caption dropout and unconditional guidance).
    pub empty_ids: Vec<usize>,
}

/// A batch on the device.
pub struct ShapesBatch<B: Backend> {
    /// `[batch, 3, size, size]` in `[-1, 1]`.
    pub pixels: Tensor<B, 4>,
    /// Encoded captions (the empty caption where dropped).
    pub ids: Vec<Vec<usize>>,
    /// Noun positions (none where the caption was dropped).
    pub nouns: Vec<NounGroups>,
}

impl ShapesSet {
    /// Renders and encodes `scenes`.
    pub fn new(scenes: Vec<Scene>, size: usize, vocab: &Vocab) -> ctcal::Result<Self> {
        let mut set = ShapesSet {
            size,
            pixels: Vec::with_capacity(scenes.len()),
            ids: Vec::with_capacity(scenes.len()),
            nouns: Vec::with_capacity(scenes.len()),
            masks: Vec::with_capacity(scenes.len()),
            empty_ids: vocab.encode("")?,
            scenes: Vec::new(),
        };
        for scene in &scenes {
            let r = render(scene, size);
            let n = size * size;
            let mut chw = vec![0.0f32; 3 * n];
            for (i, px) in r.rgb.chunks_exact(3).enumerate() {
                for k in 0..3 {
                    chw[k * n + i] = px[k] as f32 / 127.5 - 1.0;
                }
            }
            let caption = scene.caption();
            let nouns = scene.claim.nouns();
            set.pixels.push(chw);
            set.ids.push(vocab.encode(&caption)?);
            set.nouns
                .push(NounGroups(vocab.noun_positions(&caption, &nouns)?));
            set.masks.push(
                scene
                    .noun_objects()
                    .iter()
                    .map(|(_, objects)| r.union_coverage(objects))
                    .collect(),
            );
        }
        set.scenes = scenes;
        Ok(set)
    }

    /// The scene indices in consecutive batches of at most `size` (the last may be shorter).
    pub fn chunks(&self, size: usize) -> impl Iterator<Item = Vec<usize>> + '_ {
        let size = size.max(1);
        (0..self.len())
            .step_by(size)
            .map(move |start| (start..(start + size).min(self.len())).collect())
    }

    /// Number of scenes.
    pub fn len(&self) -> usize {
        self.scenes.len()
    }

    /// Whether there are no scenes.
    pub fn is_empty(&self) -> bool {
        self.scenes.is_empty()
    }

    /// The scenes at `index` as a batch; `dropped[i]` replaces caption `i` by the empty one.
    pub fn batch<B: Backend>(
        &self,
        index: &[usize],
        dropped: &[bool],
        device: &B::Device,
    ) -> ctcal::Result<ShapesBatch<B>> {
        if let Some(&i) = index.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Input(format!(
                "shapes batch: index {i} in a set of {}",
                self.len()
            )));
        }
        let s = self.size;
        let values: Vec<f32> = index
            .iter()
            .flat_map(|&i| self.pixels[i].iter().copied())
            .collect();
        let pixels = Tensor::from_data(TensorData::new(values, [index.len(), 3, s, s]), device);
        let drop = |k: usize| dropped.get(k).copied().unwrap_or(false);
        Ok(ShapesBatch {
            pixels,
            ids: (0..index.len())
                .map(|k| {
                    if drop(k) {
                        self.empty_ids.clone()
                    } else {
                        self.ids[index[k]].clone()
                    }
                })
                .collect(),
            nouns: (0..index.len())
                .map(|k| {
                    if drop(k) {
                        NounGroups::none()
                    } else {
                        self.nouns[index[k]].clone()
                    }
                })
                .collect(),
        })
    }
}

/// The scenes as a training set: pixels, captions and their noun token positions; nothing to
/// read, so no sample is ever bad.
impl Dataset for ShapesSet {
    fn len(&self) -> usize {
        self.scenes.len()
    }

    fn policy(&self) -> BadRowPolicy {
        BadRowPolicy::Fail
    }

    fn load(&self, index: usize) -> Result<Sample, BadRow> {
        let s = self.size;
        let pixels =
            HostTensor::new([3, s, s], self.pixels[index].clone()).map_err(|e| BadRow {
                metadata: "generated shapes scenes".into(),
                line: index + 1,
                file_name: None,
                reason: e.to_string(),
            })?;
        Ok(Sample {
            index,
            line: index + 1,
            caption: self.scenes[index].caption(),
            nouns: Nouns::Tokens(self.nouns[index].clone()),
            features: Features::Pixels(pixels),
        })
    }
}
