//! The training examples' settings: flags over `--config run.toml` over, with `--resume`, the
//! run's saved `config.toml`, over the defaults (`ctcal::train`'s settings files do the TOML).
//!
//! A file's top-level keys are the flags without dashes (`pipeline`, `data`, `rank`, ...);
//! the training config is its `[train]` table, where the flags that set training settings
//! (`--steps`, `--lr`, `--ctcal-weight`, ...) write, so those are not top-level keys.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Parser};
use ctcal::train::{Layers, SettingsFile, TRAIN_TABLE, from_table, saved_settings, to_table};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::train::TrainArgs;

/// The flags of [`TrainArgs`] that set training settings, with the `[train]` keys they set.
const TRAIN_FLAGS: &[(&str, &[&str])] = &[
    ("steps", &["steps"]),
    ("batch_size", &["batch_size"]),
    ("grad_accum", &["grad_accum"]),
    ("lr", &["lr"]),
    ("text_encoder_lr", &["text_encoder_lr"]),
    ("warmup_steps", &["warmup_steps"]),
    ("lr_schedule", &["lr_schedule"]),
    ("ema_decay", &["ema_decay"]),
    ("seed", &["seed"]),
    ("checkpoint_every", &["checkpoint_every"]),
    ("checkpoints_total_limit", &["checkpoints_total_limit"]),
    ("mixed_precision", &["mixed_precision"]),
    ("latent_mean", &["sample_posterior"]),
    ("ctcal_weight", &["ctcal.lambda_ctcal"]),
    ("map_layers", &["ctcal.layer_paths"]),
];

/// `--recipe` is a top-level key (the base the `[train]` table builds on); given as a flag it
/// also wins over the files' `[train]` values it sets.
const RECIPE_KEYS: &[&str] = &[
    "steps",
    "batch_size",
    "lr",
    "text_encoder_lr",
    "weight_decay",
    "warmup_steps",
    "lr_schedule",
    "max_grad_norm",
];

/// Flags that are actions of this invocation, not settings of the run (what to do, where to
/// run it: the devices and machines): never read from or written to a file.
const ACTIONS: &[&str] = &[
    "config",
    "resume",
    "resume_from_checkpoint",
    "overwrite",
    "devices",
    "num_devices",
    "num_nodes",
    "node_rank",
    "orchestrator",
    "node_address",
];

/// A training example's command line: its own flags and the shared [`TrainArgs`].
pub trait TrainCli: Parser + Serialize + DeserializeOwned {
    /// Its own flags that set training settings, with the `[train]` keys they set (e.g. the
    /// teacher's timestep, `ctcal.teacher`).
    const OWN_TRAIN_FLAGS: &'static [(&'static str, &'static [&'static str])];
    /// The shared flags.
    fn train_args(&self) -> &TrainArgs;
    /// The shared flags, to fill in.
    fn train_args_mut(&mut self) -> &mut TrainArgs;
}

/// Parses the command line of `C` and lays it over its settings files: `--config` and, with
/// `--resume`, the saved settings of the output folder (`default_out` without `--out`).
pub fn parse<C: TrainCli>(default_out: &str) -> Result<C> {
    let matches = C::command().get_matches();
    let cli = C::from_arg_matches(&matches)?;
    let given = given_flags(&matches);
    let config = match &cli.train_args().config {
        Some(path) => vec![SettingsFile::read(path)?],
        None => Vec::new(),
    };
    // The output folder may come from the --config file; its saved settings lie under it.
    let first = lay_over(&cli, &config, &given, C::OWN_TRAIN_FLAGS)?;
    let mut files = config.clone();
    if cli.train_args().resuming() {
        let out = first.train_args().out(default_out);
        if let Some(saved) = saved_settings(&out)? {
            tracing::info!("resuming with the settings of {}", saved.origin);
            files.insert(0, saved);
        }
    }
    let mut resolved = lay_over(&cli, &files, &given, C::OWN_TRAIN_FLAGS)?;
    let args = cli.train_args();
    let mut flagged = BTreeSet::new();
    for (flag, keys) in TRAIN_FLAGS.iter().chain(C::OWN_TRAIN_FLAGS) {
        if given.contains(*flag) {
            flagged.extend(keys.iter().map(|k| k.to_string()));
        }
    }
    if given.contains("recipe") {
        flagged.extend(RECIPE_KEYS.iter().map(|k| k.to_string()));
    }
    let target = resolved.train_args_mut();
    // Actions are not settings: they are this invocation's.
    target.config = args.config.clone();
    target.resume = args.resume;
    target.resume_from_checkpoint = args.resume_from_checkpoint.clone();
    target.overwrite = args.overwrite;
    target.devices = args.devices.clone();
    target.num_devices = args.num_devices;
    target.num_nodes = args.num_nodes;
    target.node_rank = args.node_rank;
    target.orchestrator = args.orchestrator.clone();
    target.node_address = args.node_address.clone();
    let run = run_keys(&resolved)?;
    resolved.train_args_mut().layers = Layers { files, flagged };
    resolved.train_args_mut().run_keys = run;
    Ok(resolved)
}

/// The flags given on the command line (clap ids: the field names).
fn given_flags(matches: &ArgMatches) -> BTreeSet<String> {
    matches
        .ids()
        .map(|id| id.as_str().to_string())
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .collect()
}

/// `cli` with the top-level keys of `files` laid over it, in order, except the flags `given`.
fn lay_over<C: TrainCli>(
    cli: &C,
    files: &[SettingsFile],
    given: &BTreeSet<String>,
    own: &[(&str, &[&str])],
) -> Result<C> {
    let known: BTreeSet<String> = C::command()
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    let mut table = to_table(cli)?;
    for file in files {
        let below = table.clone();
        let mut laid = Vec::new();
        for (key, value) in file.run_keys() {
            check_key(&key, file, &known, own)?;
            if !given.contains(&key) {
                table.insert(key.clone(), value.clone());
                laid.push((key, value));
            }
        }
        // Each file read on its own, so that an error names it; serde loses the key of a
        // flattened field, so a failure is retried key by key to name it.
        if let Err(e) = from_table::<C>(table.clone(), &file.origin) {
            for (key, value) in laid {
                let mut one = below.clone();
                let origin = format!("{}: `{key}`", file.origin);
                one.insert(key, value);
                from_table::<C>(one, &origin)?;
            }
            return Err(e.into());
        }
    }
    Ok(from_table(table, "the command line")?)
}

/// Refuses a top-level `key` of `file` that is not a flag of the program, is a training
/// setting (those go under `[train]`) or an action.
fn check_key(
    key: &str,
    file: &SettingsFile,
    known: &BTreeSet<String>,
    own: &[(&str, &[&str])],
) -> Result<()> {
    if !known.contains(key) {
        bail!(
            "{}: unknown setting `{key}` (top-level keys are this program's flags without \
             dashes, e.g. `validation_steps` for --validation-steps; the training config goes \
             under [{TRAIN_TABLE}])",
            file.origin
        );
    }
    if let Some((_, keys)) = TRAIN_FLAGS.iter().chain(own).find(|(flag, _)| *flag == key) {
        bail!(
            "{}: `{key}` is a training setting: set it as `{}` under [{TRAIN_TABLE}]",
            file.origin,
            keys.join("`, `")
        );
    }
    if ACTIONS.contains(&key) {
        bail!(
            "{}: `{key}` is not a setting of the run; give --{} on the command line",
            file.origin,
            key.replace('_', "-")
        );
    }
    Ok(())
}

/// The run's own settings as the resolved `config.toml` holds them: every setting flag's
/// value, less those written under `[train]` and the actions.
pub fn run_keys<C: TrainCli>(cli: &C) -> Result<toml::Table> {
    let mut table = to_table(cli)?;
    for (flag, _) in TRAIN_FLAGS.iter().chain(C::OWN_TRAIN_FLAGS) {
        table.remove(*flag);
    }
    for action in ACTIONS {
        table.remove(*action);
    }
    Ok(table)
}
