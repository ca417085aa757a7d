//! The optimiser loop of a [`Trainer`](super::Trainer): CTCal steps with gradient accumulation,
//! global-norm clipping, AdamW, an optional EMA, `metrics.jsonl` and crash-safe checkpoints,
//! resumed bit for bit; written once for every [`Trainable`] module.

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::batches::NodeBatches;
use super::checkpoint::{
    CheckpointParts, CheckpointState, Trained, checkpoint_dir, latest_checkpoint, load_checkpoint,
    read_state, save_checkpoint,
};
use super::parallel::{MicroParts, Peer, StepFlags, param_moments};
use super::tensorboard::wall_time_now;
use super::{Ema, StepLog, TrainConfig, TrainInputs, Trainable, clip_global_norm, stable_ids};
use crate::backend::KernelBackend;
use crate::calibration::{LossParts, MapAutoEncoder, StepDraw, ctcal_step};
use crate::data::{Batch, BatchFeatures, DataCursor, DataFingerprint};
use crate::error::{Error, Result};
use crate::lora::export_peft;
use crate::nn::normal_tensor;
use crate::nouns::Nouns;
use crate::precision::cast_params;
use crate::schedule::Schedule;

/// The LoRA export's file name, in the output folder and in each checkpoint (diffusers').
const LORA_WEIGHTS: &str = "pytorch_lora_weights.safetensors";

/// Writes `model`'s adapters to `dir/pytorch_lora_weights.safetensors` in the PEFT layout
/// diffusers' `load_lora_weights` reads: the run's export and each checkpoint's.
pub(crate) fn export_lora<B: AutodiffBackend, M: Trainable<B>>(
    model: &M,
    dir: &Path,
) -> Result<std::path::PathBuf> {
    let path = dir.join(LORA_WEIGHTS);
    export_peft(model, &path, M::PEFT_PREFIX)?;
    Ok(path)
}

/// Mixes `(seed, step, stream)` into one seed (SplitMix64 finaliser), so the randomness of a
/// step does not depend on what ran before it: a resumed run draws exactly what an
/// uninterrupted one would.
pub fn step_seed(seed: u64, step: usize, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_add((step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Everything the loop reads.
pub(crate) struct LoopSetup<'a, I: ?Sized> {
    pub config: &'a TrainConfig,
    pub trained: Trained,
    pub inputs: &'a I,
    /// Whole batches in data order (this machine's loader, shared by its peers).
    pub batches: &'a NodeBatches,
    /// The metadata file of the data, to name in errors.
    pub source: Option<&'a Path>,
    pub schedule: &'a Schedule,
    /// Output folder: `checkpoints/` and `metrics.jsonl` go here.
    pub out: &'a Path,
    /// Continue from `out/checkpoints/latest` when it exists.
    pub resume: bool,
    /// The data's fingerprint, saved in checkpoints and checked on resume.
    pub fingerprint: Option<DataFingerprint>,
    /// The resolved settings file, written into each checkpoint.
    pub settings: &'a str,
    /// The rows left out before training, for the first step's log.
    pub skipped_before: Option<String>,
    /// This peer's place in a data-parallel run ([`Peer::SINGLE`] on one device).
    pub peer: Peer,
    /// Stop after the first step that ends past this instant (checkpointed, resumable).
    pub deadline: Option<Instant>,
}

impl<'a, I: ?Sized> LoopSetup<'a, I> {
    /// The same setup for another peer (no rows skipped before training to report).
    pub fn borrowed(&self) -> Self {
        Self {
            fingerprint: self.fingerprint.clone(),
            skipped_before: None,
            ..*self
        }
    }
}

/// What the loop leaves.
pub(crate) struct LoopEnd<M, A> {
    pub model: M,
    pub ema: Option<M>,
    pub ae: A,
    /// The step the loop started from (0, or the resumed checkpoint's).
    pub start: usize,
    /// The steps done when it ended: `config.steps`, or fewer when the time limit stopped
    /// it (after a checkpoint of that step).
    pub end: usize,
}

/// The data cursor a run resumed from `out` starts at: the latest checkpoint's, if any.
pub(crate) fn resume_cursor(out: &Path, resume: bool) -> Result<Option<(usize, DataCursor)>> {
    if !resume {
        return Ok(None);
    }
    match latest_checkpoint(&out.join("checkpoints"))? {
        Some(dir) => {
            let state = read_state(&dir)?;
            Ok(Some((state.step, state.cursor)))
        }
        None => Ok(None),
    }
}

/// Trains `model` from its current parameters (or the latest checkpoint when resuming).
/// `started` is called once with the first step; `on_step` sees every step's log and the model
/// after it (to render validation images, say); an error from it stops the run. A peer other
/// than the main one of a data-parallel run writes nothing and calls neither.
pub(crate) fn run_steps<B, M, I>(
    model: M,
    setup: LoopSetup<'_, I>,
    device: &B::Device,
    mut started: impl FnMut(usize),
    mut on_step: impl FnMut(&StepLog, &M) -> Result<()>,
) -> Result<LoopEnd<M, MapAutoEncoder<B>>>
where
    B: AutodiffBackend + KernelBackend,
    M: Trainable<B>,
    I: TrainInputs<B, M> + ?Sized,
{
    let LoopSetup {
        config,
        trained,
        inputs,
        batches,
        source,
        schedule,
        out,
        resume,
        fingerprint,
        settings,
        skipped_before,
        peer,
        deadline,
    } = setup;
    let mut skipped_before = skipped_before;
    // burn initialises parameters lazily, at first use: `stable_ids` reads every one, so
    // the draws of those not loaded from files happen here, under the RNG lock.
    let (mut model, mut ae) = peer.with_device_rng(|| {
        let model = stable_ids(model, "denoiser");
        B::seed(device, step_seed(config.seed, 0, 0xAE));
        let ae = config.ctcal.autoencoder.init::<B>(device);
        (model, stable_ids(ae, "autoencoder"))
    });
    let adamw = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .with_epsilon(config.adam_epsilon as f32);
    let mut optim = adamw.init::<B, M>();
    // The text encoders' own AdamW (their gradients only), when the module trains them.
    let mut optim_text = M::TRAINS_TEXT_ENCODER.then(|| adamw.init::<B, M>());
    let mut optim_ae = adamw.init::<B, MapAutoEncoder<B>>();
    let root = out.join("checkpoints");
    if peer.is_main() {
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    }
    let checkpoint_export = |dir: &Path, model: &M| export_lora(model, dir).map(|_| ());

    // Resume.
    let mut start = 0;
    let mut ema = None;
    if resume && let Some(dir) = latest_checkpoint(&root)? {
        // `Trainer::fit` checked its settings and data (`check_resume`) before writing anything.
        let state = read_state(&dir)?;
        let optims = (optim, optim_text, optim_ae);
        let loaded = load_checkpoint(&dir, &state, model, ae, optims, device)?;
        (model, ae, (optim, optim_text, optim_ae), ema) = loaded;
        start = state.step;
        if peer.is_main() {
            tracing::info!("resuming from {} (step {start})", dir.display());
        }
    }
    if peer.is_parallel() {
        let moments = [param_moments(&model), param_moments(&ae)].concat();
        peer.check_same_start::<B::InnerBackend>(moments.to_vec(), device)?;
    }
    // Peer 0 alone keeps the EMA: the others' parameters are the same.
    let mut ema = config
        .ema_decay
        .filter(|_| peer.is_main())
        .map(|decay| match ema.take() {
            Some(m) => Ema { model: m, decay },
            None => Ema::new(&model, decay),
        });
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = match peer.is_main() {
        true => Some(open_metrics(&metrics_path, start)?),
        false => None,
    };

    let ae_peak = config.ae_lr.unwrap_or(config.lr);
    let accum = config.grad_accum;
    // A failure of peer 0's writes after a step, told to the other peers with the next one.
    let mut deferred: Option<Error> = None;
    let mut end = config.steps;
    started(start);
    for step in start..config.steps {
        let began = Instant::now();
        // The device RNG (a VAE posterior sample): a stream per micro-batch and peer, seeded
        // and drawn under the process's RNG lock.
        let device_seed = step_seed(config.seed, step, 0xD0);
        let mut acc = GradientsAccumulator::<M>::new();
        let mut acc_ae = GradientsAccumulator::<MapAutoEncoder<B>>::new();
        let mut skipped: Vec<String> = skipped_before.take().into_iter().collect();
        let mut cursor = None;
        let mut micro_step = || -> Result<Vec<MicroParts>> {
            let mut micros = Vec::with_capacity(accum);
            for micro in 0..accum {
                let seq = (step * accum + micro) as u64;
                let whole =
                    batches.take(seq, |batch, _| drop_captions(batch, config, step, micro))?;
                if !whole.skipped.0.is_empty() {
                    skipped.push(whole.skipped.to_string());
                }
                cursor = Some(whole.next_cursor);
                let rows = peer.rows(whole.len());
                let share = rows.len() as f64 / whole.len() as f64;
                let batch = match peer.is_parallel() {
                    true => Cow::Owned(whole.rows(rows.clone())?),
                    false => Cow::Borrowed(&*whole),
                };
                // A compute copy per micro-batch under mixed precision; its casts hand the
                // gradients to `model`.
                let compute = config
                    .mixed_precision
                    .compute_dtype()
                    .map(|dtype| cast_params(&model, dtype));
                let module = compute.as_ref().unwrap_or(&model);
                let data = peer
                    .with_device_rng(|| {
                        let seed = match (peer.rank * accum + micro) as u64 {
                            0 => device_seed,
                            stream => step_seed(device_seed, step, stream),
                        };
                        B::seed(device, seed);
                        inputs.train_batch(module, &batch, config, device)
                    })
                    .map_err(|e| name_rows(e, &batch, source))?;
                let mut rng = StdRng::seed_from_u64(step_seed(config.seed, step, micro as u64));
                let teacher_seed = step_seed(config.seed, step, 0x7EA0 + micro as u64);
                let [_, c, h, w] = data.latents.dims();
                let shape = [whole.len(), c, h, w];
                let draw = draw_step(&mut rng, teacher_seed, schedule, config, shape, device)?;
                let draw = match peer.is_parallel() {
                    true => draw.rows(rows)?,
                    false => draw,
                };
                let out = ctcal_step(
                    module.denoiser(),
                    &ae,
                    &data,
                    &draw,
                    schedule,
                    &config.ctcal,
                )?;
                // This shard's part of the whole batch's mean, averaged over micro-batches.
                let scale = share / accum as f64;
                let mut grads = out.loss.mul_scalar(scale).backward();
                acc.accumulate(&model, GradientsParams::from_module(&mut grads, &model));
                acc_ae.accumulate(&ae, GradientsParams::from_module(&mut grads, &ae));
                micros.push(MicroParts {
                    parts: out.parts,
                    with_nouns: out.samples_with_nouns,
                    share,
                });
            }
            Ok(micros)
        };
        // Past the time limit after this step's batches: it is the run's last (every peer
        // stops at the same step: the flag is ORed over them).
        let out_of_time = || deadline.is_some_and(|d| Instant::now() >= d);
        let (parts, mut grads, mut grads_ae, stop) = if peer.is_parallel() {
            // Every peer reaches the reduction, failed or not, so none waits for ever.
            let ran = match deferred.is_some() {
                true => Ok(Vec::new()),
                false => std::panic::catch_unwind(std::panic::AssertUnwindSafe(micro_step))
                    .unwrap_or_else(|panic| Err(Error::Training(panic_message(&panic)))),
            };
            let (micros, failure) = match ran {
                Ok(micros) => (micros, deferred.take()),
                Err(e) => (Vec::new(), Some(e)),
            };
            let (grads, grads_ae) = (acc.grads(), acc_ae.grads());
            let flags = StepFlags {
                failed: failure.is_some(),
                ae_grads: !grads_ae.is_empty(),
                stop: out_of_time(),
            };
            let (parts, flags) =
                peer.reduce_step::<B::InnerBackend>(&micros, accum, flags, device)?;
            if let Some(e) = failure {
                return Err(e);
            }
            if flags.failed {
                return Err(Error::PeerFailed { step: step + 1 });
            }
            let grads = peer.reduce_grads(&model, grads)?;
            let grads_ae = match flags.ae_grads {
                true => peer.reduce_grads(&ae, grads_ae)?,
                false => GradientsParams::new(),
            };
            (parts, grads, grads_ae, flags.stop)
        } else {
            let micros = micro_step()?;
            let mut parts = LossParts::default();
            for m in micros {
                parts = add_parts(parts, m.parts, 1.0 / accum as f64);
            }
            (parts, acc.grads(), acc_ae.grads(), out_of_time())
        };
        if !parts.total.is_finite() {
            let kept = match latest_checkpoint(&root)? {
                Some(dir) => format!("the last checkpoint, {}, is intact", dir.display()),
                None => "no checkpoint was written yet".into(),
            };
            return Err(Error::Training(format!(
                "step {}: the loss is {} (diffusion {}, ctcal {}); stopped before updating the \
                 weights; {kept} (lower --lr or check the data)",
                step + 1,
                parts.total,
                parts.diffusion,
                parts.ctcal,
            )));
        }
        let grad_norm = match config.max_grad_norm {
            Some(max) => clip_global_norm((&model, &mut grads), (&ae, &mut grads_ae), max),
            None => 0.0,
        };
        let lr = config.lr_at(step, config.lr);
        if let Some(optim_text) = optim_text.as_mut() {
            let text_grads = model.take_text_encoder_grads(&mut grads);
            let text_lr = config.lr_at(step, config.text_encoder_lr);
            model = optim_text.step(text_lr, model, text_grads);
        }
        model = optim.step(lr, model, grads);
        ae = optim_ae.step(config.lr_at(step, ae_peak), ae, grads_ae);
        if let Some(ema) = ema.as_mut() {
            ema.update(&model);
        }
        let step_time = began.elapsed().as_secs_f64();
        let done = step + 1;
        let stopped = stop && done < config.steps;
        if stopped {
            end = done;
        }
        let Some(metrics) = metrics.as_mut() else {
            match stopped {
                true => break,
                false => continue,
            }
        };

        let every = config.checkpoint_every;
        let due = done == config.steps || stopped || (every > 0 && done % every == 0);
        let log = StepLog {
            step: done,
            lr,
            grad_norm,
            loss: parts,
            skipped: (!skipped.is_empty()).then(|| skipped.join("; ")),
            checkpoint: due.then(|| checkpoint_dir(&root, done)),
            wall_time: wall_time_now(),
            step_time,
        };
        let mut written = || -> Result<()> {
            // The step's line goes in before its checkpoint: a run killed between the two
            // resumes from the checkpoint before, which drops the line and runs the step again
            // (in the other order the line of a step whose checkpoint was written was lost).
            write_metrics(metrics, &metrics_path, &log)?;
            if due {
                let state = CheckpointState {
                    step: done,
                    cursor: cursor.ok_or_else(|| Error::Loader("a step without a batch".into()))?,
                    config: config.clone(),
                    trained,
                    data: fingerprint.clone(),
                };
                let parts = CheckpointParts {
                    model: &model,
                    ae: &ae,
                    optim: &optim,
                    optim_text: optim_text.as_ref(),
                    optim_ae: &optim_ae,
                    ema: ema.as_ref().map(|e| &e.model),
                    export: (trained == Trained::Lora).then_some(&checkpoint_export),
                    settings: Some(settings),
                    _b: std::marker::PhantomData,
                };
                save_checkpoint(&root, &state, parts)?;
            }
            tracing::debug!(
                step = done,
                loss = log.loss.total,
                diffusion = log.loss.diffusion,
                ctcal = log.loss.ctcal,
                lr,
                grad_norm,
                step_time,
                "step"
            );
            on_step(&log, &model)
        };
        match written() {
            Err(e) if peer.is_parallel() && done < config.steps && !stopped => deferred = Some(e),
            result => result?,
        }
        if stopped {
            tracing::info!("time limit reached after step {done} of {}", config.steps);
            break;
        }
    }
    if let Some(e) = deferred {
        return Err(e);
    }
    Ok(LoopEnd {
        model,
        ema: ema.map(|e| e.model),
        ae,
        start,
        end,
    })
}

/// The message of a caught panic.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    format!("a data-parallel peer panicked: {text}")
}

/// An error from encoding a batch's captions and nouns (an over-long caption, a noun past the
/// text encoder's tokens), with the metadata file and lines of the batch's rows added.
fn name_rows(error: Error, batch: &Batch, source: Option<&Path>) -> Error {
    let Error::Input(message) = error else {
        return error;
    };
    let rows: Vec<String> = batch
        .lines
        .iter()
        .zip(&batch.captions)
        .map(|(line, caption)| format!("line {line}: {caption:?}"))
        .collect();
    let file = source.map_or_else(|| "the data".into(), |p| p.display().to_string());
    Error::Input(format!(
        "{message}; in a caption of {file} ({}); fix or remove that row",
        rows.join(", ")
    ))
}

/// Replaces each caption by the empty one with probability `config.caption_dropout` (its
/// nouns go with it), from an RNG of its own per micro-batch.
fn drop_captions(batch: &mut Batch, config: &TrainConfig, step: usize, micro: usize) -> Result<()> {
    if config.caption_dropout == 0.0 {
        return Ok(());
    }
    if matches!(batch.features, BatchFeatures::Cached { .. }) {
        return Err(Error::Config(
            "caption_dropout needs image data: cached features hold encoded captions".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(step_seed(config.seed, step, 0xC0 + micro as u64));
    for (caption, nouns) in batch.captions.iter_mut().zip(&mut batch.nouns) {
        if rng.random_bool(config.caption_dropout) {
            caption.clear();
            *nouns = Nouns::Words(Vec::new());
        }
    }
    Ok(())
}

/// The noise and levels of one micro-batch: the student's levels and the noise come from
/// `rng` exactly as in plain fine-tuning, the teacher's levels from a stream of their own
/// (`teacher_seed`), so the teacher rule and `lambda_ctcal` leave the diffusion loss's draws
/// alone.
fn draw_step<B: AutodiffBackend>(
    rng: &mut StdRng,
    teacher_seed: u64,
    schedule: &Schedule,
    config: &TrainConfig,
    shape: [usize; 4],
    device: &B::Device,
) -> Result<StepDraw<B>> {
    let student = schedule.sample_levels(rng, shape[0]);
    let noise = normal_tensor(rng, shape, device);
    let teacher = config.ctcal.teacher.teacher_levels(
        schedule,
        &student,
        &mut StdRng::seed_from_u64(teacher_seed),
    )?;
    Ok(StepDraw {
        noise,
        student,
        teacher,
    })
}

fn add_parts(a: LossParts, b: LossParts, w: f64) -> LossParts {
    LossParts {
        total: a.total + w * b.total,
        diffusion: a.diffusion + w * b.diffusion,
        ctcal: a.ctcal + w * b.ctcal,
        pixel: a.pixel + w * b.pixel,
        semantic: a.semantic + w * b.semantic,
        recon: a.recon + w * b.recon,
        balance: a.balance + w * b.balance,
    }
}

/// A resumed run must draw the same data and randomness as the one it continues.
/// Refuses to resume from the latest checkpoint in `out` when it was made with other
/// settings or on other data; nothing to check without one. Called before a run writes
/// anything.
pub(crate) fn check_resume(
    out: &Path,
    config: &TrainConfig,
    trained: Trained,
    data: Option<&DataFingerprint>,
) -> Result<()> {
    match latest_checkpoint(&out.join("checkpoints"))? {
        Some(dir) => check_compatible(&read_state(&dir)?, config, trained, data, &dir),
        None => Ok(()),
    }
}

fn check_compatible(
    state: &CheckpointState,
    config: &TrainConfig,
    trained: Trained,
    data: Option<&DataFingerprint>,
    dir: &Path,
) -> Result<()> {
    if let (Some(then), Some(now)) = (&state.data, data)
        && let Some(changes) = then.changes(now)
    {
        return Err(Error::Config(format!(
            "cannot resume from {}: the training data changed since the run began ({changes}); \
             resume on the data the run started with, or start afresh (--overwrite)",
            dir.display()
        )));
    }
    let c = &state.config;
    let differs = [
        ("seed", c.seed != config.seed),
        ("batch_size", c.batch_size != config.batch_size),
        ("grad_accum", c.grad_accum != config.grad_accum),
        (
            "trained parameters (LoRA or full)",
            state.trained != trained,
        ),
        (
            "ema_decay",
            c.ema_decay.is_some() != config.ema_decay.is_some(),
        ),
    ];
    match differs.iter().find(|(_, d)| *d) {
        Some((field, _)) => Err(Error::Config(format!(
            "cannot resume from {}: its {field} differs from this run's",
            dir.display()
        ))),
        None if state.step > config.steps => Err(Error::Config(format!(
            "cannot resume from {}: it is at step {} but this run has steps = {}",
            dir.display(),
            state.step,
            config.steps
        ))),
        None => Ok(()),
    }
}

/// Opens `metrics.jsonl` for appending, dropping lines past `start` (left by a run that died
/// after its last checkpoint).
fn open_metrics(path: &Path, start: usize) -> Result<std::fs::File> {
    let kept: Vec<String> = if start > 0 && path.exists() {
        std::fs::read_to_string(path)
            .map_err(|e| Error::io(path, e))?
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s as usize <= start)
            })
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::weights::write_atomic(path, text.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Every step of the run in `metrics.jsonl` at `path`, including those of the runs it resumed
/// (what the loss plot shows); a line that does not parse is an error naming it.
pub(crate) fn read_metrics(path: &Path) -> Result<Vec<StepLog>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| {
                Error::Input(format!("{}:{}: not a step log: {e}", path.display(), i + 1))
            })
        })
        .collect()
}

fn write_metrics(file: &mut std::fs::File, path: &Path, log: &StepLog) -> Result<()> {
    let line = serde_json::to_string(log).map_err(|error| Error::Json {
        path: path.to_path_buf(),
        error,
    })?;
    writeln!(file, "{line}").map_err(|e| Error::io(path, e))
}
