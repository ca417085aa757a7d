//! What a training run reports as it goes ([`Event`]): listeners added with
//! [`Trainer::listen`](super::Trainer::listen) see each one, the way burn-train's renderers and
//! loggers see its events. The library prints nothing; a progress bar, a logger or a dashboard
//! is a listener.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::calibration::LossParts;
use crate::data::BadRows;
use crate::lora::LoraReport;

/// What one optimiser step did (also a line of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    /// Optimiser steps completed.
    pub step: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping (0 without clipping).
    pub grad_norm: f64,
    /// Loss parts averaged over the micro-batches.
    pub loss: LossParts,
    /// Bad samples skipped while loading this step's batches (one line), if any; the first
    /// step of a run also lists the rows left out before training.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The checkpoint written after this step, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    /// When the step ended: seconds since the Unix epoch (TensorBoard's `wall_time`).
    #[serde(default)]
    pub wall_time: f64,
    /// Wall-clock seconds of the step: loading its batches, forward, backward and update (not
    /// the checkpoint). GPU backends may still be running queued kernels when it is read.
    #[serde(default)]
    pub step_time: f64,
}

/// The kinds of files a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A checkpoint folder (`checkpoints/step-NNNNNNN`).
    Checkpoint,
    /// A row of validation images (`validation/step_NNNNN.png`).
    Validation,
    /// Teacher | student noun maps of the preview captions (`maps_start.png`, `maps_end.png`).
    MapPreview,
    /// The loss curves (`loss.png`).
    LossPlot,
    /// The trained adapters in the PEFT layout diffusers loads
    /// (`pytorch_lora_weights.safetensors`).
    LoraWeights,
    /// The trained CTCal map auto-encoder (`autoencoder.safetensors`).
    AutoEncoder,
    /// The model card (`README.md`).
    ModelCard,
    /// The run's resolved settings (`config.toml`).
    Settings,
    /// The TensorBoard event file of this start of the run (`logs/events.out.tfevents.*`).
    TensorBoard,
}

/// One thing that happened in a run.
#[derive(Debug)]
pub enum Event<'a> {
    /// The module is ready: adapters attached (`lora`, LoRA runs) and parameters counted.
    Prepared {
        /// What the adapters are, for a LoRA run.
        lora: Option<&'a LoraReport>,
        /// Scalar parameters that take gradients.
        trainable: usize,
        /// All scalar parameters.
        total: usize,
    },
    /// Rows of the data left out before training: those the dataset skipped when it opened
    /// and those whose captions the text side cannot take (only sent when there are any; each
    /// is fatal instead under [`BadRowPolicy::Fail`](crate::data::BadRowPolicy::Fail)). The
    /// first step's `metrics.jsonl` line records them too.
    Skipped(&'a BadRows),
    /// The loop starts after step `start` (0, or the resumed checkpoint's) and runs to `steps`.
    Started {
        /// Steps already done.
        start: usize,
        /// The last step.
        steps: usize,
        /// Samples in the dataset.
        samples: usize,
    },
    /// An optimiser step finished.
    Step(&'a StepLog),
    /// A file or folder was written.
    Wrote {
        /// What it is.
        output: Output,
        /// Where.
        path: &'a Path,
        /// The step it shows (0: before training).
        step: usize,
    },
}
