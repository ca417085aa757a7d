//! The pictures a run writes beside its checkpoints: noun-map previews of a fixed batch, and
//! validation images rendered with the module being trained.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};

use super::{TrainConfig, TrainInputs, map_preview, preview_levels};
use crate::calibration::TrainBatch;
use crate::data::{Batch, DataCursor, Dataset};
use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::nouns::Nouns;
use crate::schedule::Schedule;
use crate::vae::tensor_to_images;
use crate::viz::save_png;
use image::RgbImage;

/// Validation images: the same prompts and seed rendered with the module being trained, at the
/// start, every `every` steps and at the end (`validation/step_NNNNN.png`, one row per render).
#[derive(Debug, Clone)]
pub struct Validation {
    /// Prompts; empty: the first two captions of the data.
    pub prompts: Vec<String>,
    /// Render every this many steps (and at the start and the end); 0: never.
    pub every: usize,
    /// Sampler steps of each render.
    pub steps: usize,
}

/// A fixed preview batch (the first four samples of the data) and its noise.
pub(crate) struct PreviewBatch<B: AutodiffBackend> {
    batch: TrainBatch<B>,
    captions: Vec<String>,
    nouns: Vec<Nouns>,
    noise: Tensor<B, 4>,
}

impl<B: AutodiffBackend> PreviewBatch<B> {
    /// Loads and encodes the first samples, then draws the noise from the device RNG seeded
    /// with the run's seed.
    pub fn new<M, I, D>(
        dataset: &D,
        inputs: &I,
        model: &M,
        config: &TrainConfig,
        device: &B::Device,
    ) -> Result<Self>
    where
        M: AutodiffModule<B>,
        I: TrainInputs<B, M> + ?Sized,
        D: Dataset + ?Sized,
    {
        B::seed(device, config.seed);
        let n = dataset.len().min(4);
        let samples = (0..n)
            .map(|i| dataset.load(i).map_err(Error::from))
            .collect::<Result<Vec<_>>>()?;
        let cursor = DataCursor::start(config.seed, dataset.len());
        let batch = Batch::collate(samples, 0, cursor, Default::default())?;
        let train_batch = inputs.train_batch(model, &batch, config, device)?;
        let noise = Tensor::random(
            train_batch.latents.dims(),
            Distribution::Normal(0.0, 1.0),
            device,
        );
        Ok(Self {
            batch: train_batch,
            captions: batch.captions,
            nouns: batch.nouns,
            noise,
        })
    }

    /// The first `n` captions, the default validation prompts.
    pub fn first_captions(&self, n: usize) -> Vec<String> {
        self.captions.iter().take(n).cloned().collect()
    }

    /// The teacher | student map of each noun of the batch, as a picture.
    pub fn render<M>(
        &self,
        model: &M,
        schedule: &Schedule,
        config: &TrainConfig,
    ) -> Result<RgbImage>
    where
        M: AutodiffModule<B> + Denoiser<B>,
        M::InnerModule: Denoiser<B::InnerBackend>,
    {
        let (teacher, student) = preview_levels(schedule, config.ctcal.teacher);
        map_preview(
            model,
            &self.batch,
            &self.captions,
            &self.nouns,
            self.noise.clone(),
            schedule,
            &config.ctcal,
            teacher,
            student,
        )
    }

    /// Writes the teacher | student map of each noun of the batch to `path`.
    pub fn write<M>(
        &self,
        model: &M,
        schedule: &Schedule,
        config: &TrainConfig,
        path: &Path,
    ) -> Result<()>
    where
        M: AutodiffModule<B> + Denoiser<B>,
        M::InnerModule: Denoiser<B::InnerBackend>,
    {
        let img = self.render(model, schedule, config)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        save_png(&img, path)
    }
}

/// Renders `validation.prompts` with `model` from `seed` and writes them side by side to
/// `out/validation/step_NNNNN.png`; returns the path.
pub(crate) fn write_validation<B, M, I>(
    inputs: &I,
    model: &M::InnerModule,
    validation: &Validation,
    seed: u64,
    step: usize,
    out: &Path,
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    I: TrainInputs<B, M> + ?Sized,
{
    let prompts: Vec<&str> = validation.prompts.iter().map(String::as_str).collect();
    let images = inputs.render(model, &prompts, validation.steps, seed)?;
    let images = tensor_to_images(images.mul_scalar(2.0).sub_scalar(1.0))?;
    let (w, h) = images
        .first()
        .map(|i| i.dimensions())
        .ok_or_else(|| Error::Input("no validation prompt".into()))?;
    let mut row = image::RgbImage::new(w * images.len() as u32, h);
    for (i, img) in images.iter().enumerate() {
        image::imageops::replace(&mut row, img, (i as u32 * w) as i64, 0);
    }
    let dir = out.join("validation");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(format!("step_{step:05}.png"));
    save_png(&row, &path)?;
    Ok(path)
}
