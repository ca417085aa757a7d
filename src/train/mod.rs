//! Training: the CTCal step of [`crate::ctcal`] in a loop with burn's AdamW, gradient
//! accumulation and global-norm clipping, an optional EMA, `metrics.jsonl`, and checkpoints
//! a killed run resumes from bit for bit.
//!
//! What burn provides is used as is (AdamW and its records, gradient accumulation, the
//! safetensors store). Three pieces are our own, for reasons given where they live:
//! the learning-rate schedule ([`TrainConfig::lr_at`], a pure function of the step, so
//! resuming needs no scheduler state), global gradient-norm clipping ([`clip_global_norm`],
//! burn clips per parameter), and stable parameter ids ([`stable_ids`], so optimiser state
//! survives a restart).

mod checkpoint;
mod config;
mod ema;
mod inputs;
mod params;
mod preview;
mod trainer;

pub use checkpoint::{
    CheckpointParts, CheckpointState, Trained, latest_checkpoint, load_checkpoint, load_params,
    read_state, save_checkpoint, save_params,
};
pub use config::{LrSchedule, TrainConfig};
pub use ema::Ema;
pub use inputs::{BatchInputs, CachedInputs};
pub use params::{clip_global_norm, count_params, grad_sq_norm, scale_grads, stable_ids};
pub use preview::{loss_plot, map_preview, preview_levels};
pub use trainer::{RunDirs, StepLog, TrainedModels, step_seed, train};
