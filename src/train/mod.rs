//! Training as a library: a [`Trainer`] runs CTCal fine-tuning (or plain diffusion training) of
//! any [`Trainable`] module, the UNet, the MMDiT or a model zoo's own, on a
//! [`Dataset`](crate::data::Dataset), and reports progress as [`Event`]s.
//!
//! ```text
//! Trainer::new(config)        TrainConfig: steps, batch, optimiser, CTCal loss, seed
//!     .output_dir("out/run")  checkpoints/, metrics.jsonl, previews, exports
//!     .resume(true)           continue the run there (or .overwrite(true): clear it)
//!     .lora(lora_config)      adapters instead of every parameter
//!     .settings(run_keys)     the program's own settings, saved with the config (config.toml)
//!     .listen(|event| ..)     progress bars, loggers
//!     .fit(model, &pipeline, dataset, &schedule, &device)
//!  or .fit_parallel(model, &[&pipeline], &devices, dataset, &schedule)   one peer a device
//! ```
//!
//! What burn provides is used as is (AdamW and its records, gradient accumulation, the
//! safetensors store, burn-collective's all-reduce of the gradients between data-parallel
//! peers). Three pieces are our own, for reasons given where they live:
//! the learning-rate schedule ([`TrainConfig::lr_at`], a pure function of the step, so
//! resuming needs no scheduler state), global gradient-norm clipping ([`clip_global_norm`],
//! burn clips per parameter), and stable parameter ids ([`stable_ids`], so optimiser state
//! survives a restart).

mod batches;
mod checkpoint;
mod config;
mod data_check;
mod ema;
mod events;
mod inputs;
mod model_card;
mod output_dir;
mod outputs;
mod parallel;
mod params;
mod peers;
mod preview;
mod record;
mod report;
mod settings;
mod steps;
mod tensorboard;
mod trainer;

pub use checkpoint::{
    CheckpointParts, CheckpointState, Trained, checkpoint_dir, latest_checkpoint, load_checkpoint,
    load_params, read_state, save_checkpoint, save_params, saved_settings,
};
pub use config::{LrSchedule, TrainConfig};
pub use ema::Ema;
pub use events::{Event, Output, StepLog};
pub use inputs::{CachedInputs, TrainInputs, Trainable};
pub use model_card::ModelCard;
pub use output_dir::check_output_dir;
pub use outputs::Validation;
pub use parallel::{DataParallel, parse_devices, serve_orchestrator};
pub use params::{
    clip_global_norm, count_params, grad_sq_norm, scale_grads, stable_ids, take_grads,
};
pub use preview::{loss_plot, map_preview, preview_levels};
pub use report::{LOG_DIR, TensorBoardLog};
pub use settings::{
    Layers, NONE, SETTINGS_FILE, SettingsFile, TRAIN_TABLE, from_table, merge, overlay, render,
    to_table, write_settings,
};
pub use steps::step_seed;
pub use tensorboard::{EventWriter, wall_time_now};
pub use trainer::{Fitted, Trainer};
