//! What a run reports to TensorBoard (`Trainer::tensorboard`): each step's losses, learning
//! rate, gradient norm and step time as scalars, and pictures (the validation images, the
//! teacher | student noun maps at the start, at each validation and at the end) as images, in
//! event files under `<out>/logs/` (diffusers' `logging_dir`), one per start of the run
//! (TensorBoard merges them).

use std::path::Path;

use super::events::StepLog;
use super::tensorboard::{EventWriter, wall_time_now};
use crate::error::{Error, Result};

/// The log folder's name in the output folder.
pub const LOG_DIR: &str = "logs";

/// A run's TensorBoard log.
pub struct TensorBoardLog {
    writer: EventWriter,
}

impl TensorBoardLog {
    /// Starts a new event file in `<out>/logs/`.
    pub fn create(out: &Path) -> Result<Self> {
        Ok(Self {
            writer: EventWriter::create(&out.join(LOG_DIR))?,
        })
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// One step's scalars, at the step's wall time: `loss/total`, `loss/diffusion`,
    /// `loss/ctcal` and the CTCal terms, `lr`, `grad_norm`, `step_time`.
    pub fn step(&mut self, log: &StepLog) -> Result<()> {
        let l = &log.loss;
        let values = [
            ("loss/total", l.total),
            ("loss/diffusion", l.diffusion),
            ("loss/ctcal", l.ctcal),
            ("ctcal/pixel", l.pixel),
            ("ctcal/semantic", l.semantic),
            ("ctcal/recon", l.recon),
            ("ctcal/balance", l.balance),
            ("lr", log.lr),
            ("grad_norm", log.grad_norm),
            ("step_time", log.step_time),
        ]
        .map(|(tag, v)| (tag, v as f32));
        self.writer.scalars(log.step as i64, &values, log.wall_time)
    }

    /// `png` (PNG bytes) as the image `tag` of `step`.
    pub fn png(&mut self, tag: &str, step: usize, png: &[u8]) -> Result<()> {
        self.writer
            .image_png(tag, step as i64, png, wall_time_now())
    }

    /// The PNG file at `path` as the image `tag` of `step`.
    pub fn png_file(&mut self, tag: &str, step: usize, path: &Path) -> Result<()> {
        let png = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        self.png(tag, step, &png)
    }
}
