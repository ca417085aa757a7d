//! [`Trainer`]: configure a run, then [`fit`](Trainer::fit) a module on a dataset; progress
//! goes out as [`Event`]s to the listeners.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use burn::backend::{Autodiff, NdArray};
//! # use ctcal::calibration::CtcalConfig;
//! # use ctcal::data::{BadRowPolicy, ImageFolder};
//! # use ctcal::lora::LoraConfig;
//! # use ctcal::pipeline::StableDiffusion;
//! # use ctcal::schedule::{DdpmConfig, Schedule};
//! # use ctcal::train::{Event, TrainConfig, Trainer};
//! # use ctcal::unet::{UNet2DConditionConfig, UNet2DConditionModel};
//! # fn main() -> ctcal::Result<()> {
//! type B = Autodiff<NdArray>;
//! let device = Default::default();
//! let pipe = StableDiffusion::<NdArray>::load("weights/tiny-sd21".as_ref(), None, &device)?;
//! let unet: UNet2DConditionModel<B> = ctcal::weights::load_module(
//!     UNet2DConditionConfig::from_diffusers_json("weights/tiny-sd21/unet/config.json".as_ref())?
//!         .init(&device),
//!     "weights/tiny-sd21/unet".as_ref(),
//!     None,
//! )?
//! .0;
//! let data = ImageFolder::open("data/metadata.jsonl".as_ref(), 64, BadRowPolicy::Skip)?;
//! let fitted = Trainer::new(TrainConfig::new(CtcalConfig::sd21()).with_steps(100))
//!     .output_dir("out/run")
//!     .lora(LoraConfig::unet_default().with_rank(4))
//!     .listen(|event| {
//!         if let Event::Step(log) = event {
//!             println!("step {} loss {:.4}", log.step, log.loss.total);
//!         }
//!     })
//!     .fit(unet, &pipe, Arc::new(data), &Schedule::Ddpm(DdpmConfig::sd21().init()), &device)?;
//! # let _ = fitted;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::cell::RefCell;

use burn::tensor::backend::AutodiffBackend;

use super::batches::NodeBatches;
use super::checkpoint::{Trained, save_params};
use super::data_check::check_captions;
use super::model_card::ModelCard;
use super::output_dir::{check_output_dir, prepare_output_dir};
use super::outputs::{PreviewBatch, Validation, write_validation};
use super::parallel::DataParallel;
use super::peers::{OneDevice, PeerRunner, PeerThreads, pair_inputs};
use super::report::TensorBoardLog;
use super::settings::{render, write_settings};
use super::steps::{LoopSetup, check_resume, export_lora, read_metrics, resume_cursor};
use super::{Event, Output, StepLog, TrainConfig, TrainInputs, Trainable, count_params, loss_plot};
use crate::backend::KernelBackend;
use crate::calibration::MapAutoEncoder;
use crate::data::{DataFingerprint, Dataset, LoaderConfig};
use crate::error::{Error, Result};
use crate::lora::{LoraConfig, apply_lora};
use crate::precision::MixedPrecision;
use crate::schedule::Schedule;
use crate::viz::{png_bytes, save_png};

/// A training run's settings and listeners; [`fit`](Self::fit) runs it.
///
/// What a run writes into its output folder (`out/` by default; a fresh run needs it empty or
/// [`overwrite`](Self::overwrite)): `checkpoints/` (every `checkpoint_every` steps and at the
/// end; `resume(true)` continues from the latest, also to more steps than first asked),
/// `logs/` with [`tensorboard`](Self::tensorboard), `config.toml` (the resolved settings, see
/// [`settings`](Self::settings); also in each checkpoint), `metrics.jsonl`, `maps_start.png` /
/// `maps_end.png` (teacher | student noun maps of the first captions, before and after),
/// `validation/` when set, `loss.png`, `autoencoder.safetensors`,
/// the model card `README.md` when [`model_card`](Self::model_card) names the base model and,
/// for a LoRA run, `pytorch_lora_weights.safetensors` (PEFT keys under the model's diffusers
/// prefix, what `pipe.load_lora_weights()` reads; also in each checkpoint). A fully
/// fine-tuned model is in the returned [`Fitted`]; saving it is the caller's (its layout
/// depends on the model).
pub struct Trainer<'a> {
    config: TrainConfig,
    out: PathBuf,
    resume: bool,
    overwrite: bool,
    lora: Option<LoraConfig>,
    previews: bool,
    time_limit: Option<Duration>,
    validation: Option<Validation>,
    base_model: Option<String>,
    settings: toml::Table,
    tensorboard: bool,
    parallel: DataParallel,
    listeners: Vec<Listener<'a>>,
}

/// A function that sees every event of a run.
type Listener<'a> = Box<dyn FnMut(&Event<'_>) + 'a>;

/// What [`Trainer::fit`] returns.
#[derive(Debug)]
pub struct Fitted<M, B: AutodiffBackend> {
    /// The trained module (adapters not merged).
    pub model: M,
    /// Its EMA, when the config keeps one.
    pub ema: Option<M>,
    /// The trained map auto-encoder.
    pub autoencoder: MapAutoEncoder<B>,
    /// The step the run started from (0, or the resumed checkpoint's).
    pub start_step: usize,
    /// The steps done when it ended: the config's `steps`, or fewer when the time limit
    /// stopped it.
    pub end_step: usize,
    /// The logs of the steps this call ran.
    pub logs: Vec<StepLog>,
}

impl<M, B: AutodiffBackend> Fitted<M, B> {
    /// The model to export: the EMA when kept, else the trained one.
    pub fn final_model(&self) -> &M {
        self.ema.as_ref().unwrap_or(&self.model)
    }
}

impl<'a> Trainer<'a> {
    /// A run with these settings, writing to `out/`, training every parameter of the module
    /// (see [`lora`](Self::lora)), with map previews and without validation images.
    pub fn new(config: TrainConfig) -> Self {
        Self {
            config,
            out: PathBuf::from("out"),
            resume: false,
            overwrite: false,
            lora: None,
            previews: true,
            time_limit: None,
            validation: None,
            base_model: None,
            settings: toml::Table::new(),
            tensorboard: false,
            parallel: DataParallel::default(),
            listeners: Vec::new(),
        }
    }

    /// The output folder.
    pub fn output_dir(mut self, out: impl Into<PathBuf>) -> Self {
        self.out = out.into();
        self
    }

    /// Continue from the latest checkpoint in the output folder, when there is one.
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// Clear the output folder before a fresh run; without it a fresh run into a folder that
    /// holds files is refused (see [`check_output_dir`](super::check_output_dir)).
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Freeze the module and train LoRA adapters on the projections `config` names (seeded by
    /// the run's seed) instead of every parameter.
    pub fn lora(mut self, config: LoraConfig) -> Self {
        self.lora = Some(config);
        self
    }

    /// Write teacher | student noun maps of the first captions before and after (default on).
    pub fn map_previews(mut self, on: bool) -> Self {
        self.previews = on;
        self
    }

    /// Stop after the first step that ends `limit` after `fit` was called: that step is
    /// checkpointed and exported as the last one would be, and [`resume`](Self::resume)
    /// continues the run to its `steps` (training a long run in pieces). In a data-parallel
    /// run every peer stops at the same step.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Render validation images during the run.
    pub fn validation(mut self, validation: Validation) -> Self {
        self.validation = Some(validation);
        self
    }

    /// At the end, write a model card (`README.md`, as diffusers' training scripts do) for a
    /// fine-tune of `base_model` (a hub id or a folder).
    pub fn model_card(mut self, base_model: impl Into<String>) -> Self {
        self.base_model = Some(base_model.into());
        self
    }

    /// The caller's own settings of the run (the model, the data, ... as its flags name them),
    /// written with the [`TrainConfig`] (under `[train]`) into `config.toml` in the output
    /// folder and in each checkpoint, so that a resumed run can read them back
    /// ([`saved_settings`](super::saved_settings)).
    pub fn settings(mut self, run: toml::Table) -> Self {
        self.settings = run;
        self
    }

    /// Also log to TensorBoard (diffusers' `--report_to tensorboard`): event files in
    /// `<out>/logs/` with each step's losses, learning rate, gradient norm and step time, the
    /// validation images and the noun-map previews (see
    /// [`TensorBoardLog`](super::TensorBoardLog)).
    pub fn tensorboard(mut self, on: bool) -> Self {
        self.tensorboard = on;
        self
    }

    /// The machines of a data-parallel run over several machines (see
    /// [`fit_parallel`](Self::fit_parallel)); one machine by default.
    pub fn data_parallel(mut self, parallel: DataParallel) -> Self {
        self.parallel = parallel;
        self
    }

    /// Adds a listener that sees every [`Event`] of the run.
    pub fn listen(mut self, listener: impl FnMut(&Event<'_>) + 'a) -> Self {
        self.listeners.push(Box::new(listener));
        self
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    fn emit(&mut self, event: &Event<'_>) {
        for listener in &mut self.listeners {
            listener(event);
        }
    }

    fn wrote(&mut self, output: Output, path: &Path, step: usize) {
        self.emit(&Event::Wrote { output, path, step });
    }

    /// Trains `model` on `dataset` under `schedule`, with `inputs` (a pipeline's frozen
    /// encoders, or cached features) turning batches into step inputs, and writes the run's
    /// outputs.
    ///
    /// Before anything is written, the config, the output folder and every caption of the data
    /// ([`TrainInputs::check_caption`]) are checked; captions that fail are left out
    /// ([`Event::Skipped`]) or stop the run, by the dataset's
    /// [`policy`](crate::data::Dataset::policy).
    pub fn fit<B, M, I, D>(
        self,
        model: M,
        inputs: &I,
        dataset: Arc<D>,
        schedule: &Schedule,
        device: &B::Device,
    ) -> Result<Fitted<M, B>>
    where
        B: AutodiffBackend + KernelBackend,
        M: Trainable<B>,
        I: TrainInputs<B, M> + ?Sized,
        D: Dataset + 'static,
    {
        self.fit_with(model, inputs, dataset, schedule, OneDevice(device))
    }

    /// [`fit`](Self::fit) data-parallel over `devices` of this machine (and, with
    /// [`data_parallel`](Self::data_parallel), over several machines): one peer thread per
    /// device, each training on `config.batch_size` samples of every batch, its gradients
    /// summed with the others' through burn-collective before each optimiser step; the run
    /// is the run of one device with `peers * batch_size` samples a batch (see
    /// [`DataParallel`] for what is reduced how). `inputs` holds one value for all devices
    /// or one per device (a pipeline on each GPU). The first device's peer runs on the
    /// calling thread and sees the listeners; on node 0 it writes every output, other
    /// machines write nothing (to resume, they read the checkpoints from their `out`, a
    /// shared or copied folder). One device is [`fit`](Self::fit).
    pub fn fit_parallel<B, M, I, D>(
        self,
        model: M,
        inputs: &[&I],
        devices: &[B::Device],
        dataset: Arc<D>,
        schedule: &Schedule,
    ) -> Result<Fitted<M, B>>
    where
        B: AutodiffBackend + KernelBackend,
        M: Trainable<B>,
        I: TrainInputs<B, M> + Sync + ?Sized,
        D: Dataset + 'static,
    {
        let peers = pair_inputs(inputs, devices)?;
        let collective = self.parallel.collective_config(peers.len())?;
        let world = peers.len() * self.parallel.nodes();
        if world == 1 {
            return self.fit(model, peers[0].0, dataset, schedule, &peers[0].1);
        }
        let runner = PeerThreads {
            peers: &peers,
            first_rank: self.parallel.node_rank * peers.len(),
            world,
            collective,
        };
        self.fit_with(model, peers[0].0, dataset, schedule, runner)
    }

    /// The run around the optimiser loop, which `runner` runs on one device or its peers;
    /// `inputs` are the main peer's.
    fn fit_with<B, M, I, D, R>(
        mut self,
        model: M,
        inputs: &I,
        dataset: Arc<D>,
        schedule: &Schedule,
        runner: R,
    ) -> Result<Fitted<M, B>>
    where
        B: AutodiffBackend + KernelBackend,
        M: Trainable<B>,
        I: TrainInputs<B, M> + ?Sized,
        D: Dataset + 'static,
        R: PeerRunner<B, M, I>,
    {
        self.config.validate()?;
        let deadline = self.time_limit.map(|limit| Instant::now() + limit);
        // Node 0 writes the outputs; other machines of a data-parallel run only train.
        let leads = self.parallel.node_rank == 0;
        if leads {
            check_output_dir(&self.out, self.resume, self.overwrite)?;
        }
        if dataset.cached_features() {
            let needs = |what: &str| {
                let source = dataset.source().map(|p| format!("{}: ", p.display()));
                Err(Error::Config(format!(
                    "{}cached features hold captions encoded beforehand, and {what} encodes \
                     them in every step: train on an image folder",
                    source.unwrap_or_default()
                )))
            };
            if M::TRAINS_TEXT_ENCODER {
                return needs("training the text encoders");
            }
            if self.config.caption_dropout > 0.0 {
                return needs("caption_dropout");
            }
        }
        let (dataset, skipped) = check_captions(dataset, inputs, &self.config)?;
        let dataset = Arc::new(dataset);
        let fingerprint = DataFingerprint::of(&*dataset);
        if self.resume {
            let trained = match self.lora {
                Some(_) => Trained::Lora,
                None => Trained::Full,
            };
            check_resume(&self.out, &self.config, trained, fingerprint.as_ref())?;
        }
        if !skipped.is_empty() {
            self.emit(&Event::Skipped(&skipped));
        }
        if self.config.mixed_precision != MixedPrecision::No && !B::HALF_PRECISION {
            return Err(Error::Config(format!(
                "mixed_precision {:?}: the ndarray backend has no bf16/f16; train on cuda (or \
                 wgpu)",
                self.config.mixed_precision
            )));
        }
        let (model, trained, report) = match &self.lora {
            Some(lora) => {
                let (model, report) = apply_lora(model, lora, self.config.seed)?;
                (model, Trained::Lora, Some(report))
            }
            None => (model, Trained::Full, None),
        };
        let (trainable, total) = count_params(&model);
        self.emit(&Event::Prepared {
            lora: report.as_ref(),
            trainable,
            total,
        });

        let device = &runner.main_device().clone();
        // Whole batches of every peer's share, in one order on every machine.
        let peer = runner.main_peer();
        let loader = LoaderConfig::new(self.config.batch_size * peer.world, self.config.seed);
        let resumed = resume_cursor(&self.out, self.resume)?;
        let first = resumed.map_or(0, |(step, _)| step * self.config.grad_accum) as u64;
        let cursor = resumed.map(|(_, cursor)| cursor);
        let batches = NodeBatches::new(dataset.clone(), &loader, cursor, first, runner.local())?;
        let source = dataset.source().map(Path::to_path_buf);
        if !leads {
            let setup = LoopSetup {
                config: &self.config,
                trained,
                inputs,
                batches: &batches,
                source: source.as_deref(),
                schedule,
                out: &self.out,
                resume: self.resume,
                fingerprint,
                settings: "",
                skipped_before: None,
                peer,
                deadline,
            };
            let end = runner.run(model, setup, |_| {}, |_, _| Ok(()))?;
            return Ok(Fitted {
                model: end.model,
                ema: end.ema,
                autoencoder: end.ae,
                start_step: end.start,
                end_step: end.end,
                logs: Vec::new(),
            });
        }

        let out = self.out.clone();
        let settings = render(&self.settings, &self.config)?;
        prepare_output_dir(&out, self.resume, self.overwrite)?;
        let path = write_settings(&out, &settings)?;
        self.wrote(Output::Settings, &path, 0);
        let mut board = match self.tensorboard {
            true => Some(TensorBoardLog::create(&out)?),
            false => None,
        };
        if let Some(board) = &board {
            self.wrote(Output::TensorBoard, board.path(), 0);
        }
        let preview = match self.previews {
            true => Some(PreviewBatch::new(
                &*dataset,
                inputs,
                &model,
                &self.config,
                device,
            )?),
            false => None,
        };
        if let Some(preview) = &preview {
            let path = out.join("maps_start.png");
            preview.write(model.denoiser(), schedule, &self.config, &path)?;
            self.wrote(Output::MapPreview, &path, 0);
            if let Some(board) = &mut board {
                board.png_file("maps", 0, &path)?;
            }
        }
        let validation = self.validation.clone().map(|mut v| {
            if v.prompts.is_empty() {
                v.prompts = preview
                    .as_ref()
                    .map(|p| p.first_captions(2))
                    .unwrap_or_default();
            }
            v
        });
        let last = self.config.steps;
        let due = |v: &Validation, step: usize| {
            v.every > 0 && !v.prompts.is_empty() && (step.is_multiple_of(v.every) || step == last)
        };
        if let Some(v) = validation.as_ref().filter(|v| due(v, 0)) {
            let path = write_validation(inputs, &model.valid(), v, self.config.seed, 0, &out)?;
            self.wrote(Output::Validation, &path, 0);
            if let Some(board) = &mut board {
                board.png_file("validation", 0, &path)?;
            }
        }

        let config = self.config.clone();
        let mut logs = Vec::new();
        let samples = dataset.len();
        let setup = LoopSetup {
            config: &config,
            trained,
            inputs,
            batches: &batches,
            source: source.as_deref(),
            schedule,
            out: &out,
            resume: self.resume,
            fingerprint,
            settings: &settings,
            skipped_before: (!skipped.is_empty()).then(|| format!("before training: {skipped}")),
            peer,
            deadline,
        };
        let listeners = RefCell::new(&mut self.listeners);
        let emit = |event: &Event<'_>| {
            listeners
                .borrow_mut()
                .iter_mut()
                .for_each(|listener| listener(event))
        };
        let end = runner.run(
            model,
            setup,
            |start| {
                emit(&Event::Started {
                    start,
                    steps: config.steps,
                    samples,
                })
            },
            |log, model| {
                emit(&Event::Step(log));
                if let Some(board) = &mut board {
                    board.step(log)?;
                }
                if let Some(dir) = &log.checkpoint {
                    emit(&Event::Wrote {
                        output: Output::Checkpoint,
                        path: dir,
                        step: log.step,
                    });
                }
                if let Some(v) = validation.as_ref().filter(|v| due(v, log.step)) {
                    let path =
                        write_validation(inputs, &model.valid(), v, config.seed, log.step, &out)?;
                    emit(&Event::Wrote {
                        output: Output::Validation,
                        path: &path,
                        step: log.step,
                    });
                    if let Some(board) = &mut board {
                        board.png_file("validation", log.step, &path)?;
                        // The noun maps at each validation (files only at the start and end).
                        if let Some(preview) = preview.as_ref().filter(|_| log.step != last) {
                            let img = preview.render(model.denoiser(), schedule, &config)?;
                            board.png("maps", log.step, &png_bytes(&img)?)?;
                        }
                    }
                }
                logs.push(log.clone());
                Ok(())
            },
        )?;

        let fitted = Fitted {
            model: end.model,
            ema: end.ema,
            autoencoder: end.ae,
            start_step: end.start,
            end_step: end.end,
            logs,
        };
        let step = end.end;
        if trained == Trained::Lora {
            let path = export_lora(fitted.final_model(), &out)?;
            self.wrote(Output::LoraWeights, &path, step);
        }
        let path = out.join("autoencoder.safetensors");
        save_params(&fitted.autoencoder, &path, |_, _| true)?;
        self.wrote(Output::AutoEncoder, &path, step);
        if let Some(preview) = &preview {
            let path = out.join("maps_end.png");
            preview.write(fitted.final_model().denoiser(), schedule, &config, &path)?;
            self.wrote(Output::MapPreview, &path, step);
            if let Some(board) = &mut board {
                board.png_file("maps", step, &path)?;
            }
        }
        // The whole run's curves, also after resumes: metrics.jsonl holds every step.
        let history = read_metrics(&out.join("metrics.jsonl"))?;
        let path = out.join("loss.png");
        save_png(&loss_plot(&history, config.ctcal.lambda_ctcal), &path)?;
        self.wrote(Output::LossPlot, &path, step);
        if let Some(base_model) = &self.base_model {
            let prompts = validation.map(|v| v.prompts).unwrap_or_default();
            let image = Path::new("validation").join(format!("step_{step:05}.png"));
            // The steps trained so far (fewer than configured when the time limit stopped it).
            let trained_config = config.clone().with_steps(step);
            let card = ModelCard {
                base_model,
                config: &trained_config,
                lora_rank: self.lora.as_ref().map(|l| l.rank),
                text_encoder: M::TRAINS_TEXT_ENCODER,
                prompts: &prompts,
                image: out.join(&image).is_file().then_some(image),
            };
            let path = card.write(&out)?;
            self.wrote(Output::ModelCard, &path, step);
        }
        Ok(fitted)
    }
}
