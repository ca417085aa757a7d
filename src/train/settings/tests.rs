use super::*;
use crate::calibration::{CtcalConfig, TeacherRule};
use crate::precision::MixedPrecision;
use crate::train::LrSchedule;

/// A config unlike the defaults in every kind of field: numbers, enums, an enum with data,
/// lists, options on and off, a nested config.
fn unusual() -> TrainConfig {
    let ctcal = CtcalConfig::sd3()
        .with_tau(0.125)
        .with_teacher(TeacherRule::FixedSigma(0.05))
        .with_layer_paths(vec!["transformer_blocks.1.attn".into()])
        .with_min_snr_gamma(Some(5.0));
    TrainConfig::new(ctcal)
        .with_steps(1234)
        .with_lr(3.5e-5)
        .with_ae_lr(Some(1e-3))
        .with_lr_schedule(LrSchedule::Cosine)
        .with_max_grad_norm(None)
        .with_ema_decay(Some(0.999))
        .with_seed(42)
        .with_mixed_precision(MixedPrecision::Bf16)
        .with_caption_dropout(0.1)
}

fn parse(text: &str) -> SettingsFile {
    SettingsFile::parse(text, "run.toml").unwrap()
}

/// A resolved file reads back to the config it was written from, whatever the base it is
/// laid over: every setting is in it, the ones that are off as "none".
#[test]
fn a_resolved_file_reads_back_to_the_same_config_over_any_base() {
    let mut run = toml::Table::new();
    run.insert("pipeline".into(), "weights/tiny-sd3".into());
    run.insert("rank".into(), 8.into());
    for config in [unusual(), TrainConfig::new(CtcalConfig::sd21())] {
        let text = render(&run, &config).unwrap();
        let file = parse(&text);
        assert_eq!(file.run_keys(), run);
        for base in [unusual(), TrainConfig::paper_recipe(CtcalConfig::sd21())] {
            assert_eq!(file.train_config(&base).unwrap(), config);
        }
    }
    let text = render(&run, &unusual()).unwrap();
    assert!(text.contains("max_grad_norm = \"none\""), "{text}");
    assert!(
        text.contains("[train.ctcal.teacher]\nFixedSigma = 0.05"),
        "{text}"
    );
}

/// A partial file changes only the keys it names, nested tables key by key; "none" turns an
/// option off and a value turns one on.
#[test]
fn a_partial_file_changes_only_its_keys() {
    let file = parse(
        "pipeline = \"x\"\n\n[train]\nsteps = 50\nlr = 2\nmax_grad_norm = \"none\"\nema_decay = 0.9\n\n\
         [train.ctcal]\ntau = 0.1\nteacher = \"BelowStudent\"\n",
    );
    let base = TrainConfig::new(CtcalConfig::sd21());
    let got = file.train_config(&base).unwrap();
    let mut want = base
        .clone()
        .with_steps(50)
        .with_lr(2.0)
        .with_max_grad_norm(None)
        .with_ema_decay(Some(0.9));
    want.ctcal = CtcalConfig::sd21()
        .with_tau(0.1)
        .with_teacher(TeacherRule::BelowStudent);
    assert_eq!(got, want);
    // A choice with data replaces the one below it whole (not merged with its variant).
    let file = parse("[train.ctcal.teacher]\nFixedSigma = 0.2\n");
    let got = file.train_config(&base).unwrap();
    assert_eq!(got.ctcal.teacher, TeacherRule::FixedSigma(0.2));
    // An empty [train] (or none at all) leaves the base as it is.
    assert_eq!(parse("pipeline = \"x\"").train_config(&base).unwrap(), base);
}

/// Layers apply in order, the last winning key by key: defaults, then a file, then the
/// flags given (as a table of their own).
#[test]
fn later_layers_win_key_by_key() {
    let base = TrainConfig::new(CtcalConfig::sd21()).with_steps(30);
    let file = parse("[train]\nsteps = 500\nbatch_size = 8\n[train.ctcal]\ntau = 0.2\n");
    let from_file = file.train_config(&base).unwrap();
    let flags = parse("[train]\nsteps = 7\n");
    let got = flags.train_config(&from_file).unwrap();
    assert_eq!((got.steps, got.batch_size, got.ctcal.tau), (7, 8, 0.2));
    assert_eq!(got.lr, base.lr);
}

/// Mistakes name the file, the table and the key: an unknown key (a typo), a value of the
/// wrong type, a syntax error with its line, a `train` that is not a table.
#[test]
fn mistakes_name_file_and_key() {
    let base = TrainConfig::new(CtcalConfig::sd21());
    let err = |text: &str| {
        SettingsFile::parse(text, "run.toml")
            .and_then(|f| f.train_config(&base))
            .unwrap_err()
            .to_string()
    };
    let msg = err("[train]\nsteps = 5\n[train.ctcal]\ntaux = 0.1\nlerning_rate = 1\n");
    assert!(
        msg.contains("run.toml [train]: unknown settings `ctcal.lerning_rate`, `ctcal.taux`"),
        "{msg}"
    );
    let msg = err("[train]\nsteps = \"many\"\n");
    assert!(
        msg.contains("run.toml [train]: `steps`: invalid type: string \"many\", expected usize"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    let msg = err("[train]\nsteps = -3\n");
    assert!(msg.contains("`steps`"), "{msg}");
    let msg = err("[train.ctcal]\nteacher = \"Oldest\"\n");
    assert!(
        msg.contains("`ctcal.teacher`") && msg.contains("Oldest"),
        "{msg}"
    );
    let msg = err("pipeline = \"x\"\n[train]\nsteps = = 3\n");
    assert!(
        msg.contains("run.toml: TOML parse error at line 3"),
        "{msg}"
    );
    let msg = err("train = 3\n");
    assert!(msg.contains("`train` must be a table"), "{msg}");
}

/// A program's layers: its flags' config (defaults included) under the files' `[train]`
/// tables (the saved settings of a resumed run, then `--config`), and the keys of the flags
/// given on the command line over both.
#[test]
fn flags_given_override_files_which_override_defaults() {
    // What the flags say: their defaults, and `--steps 60 --ctcal-weight 0.5` given.
    let flags = TrainConfig::new(CtcalConfig::sd21().with_lambda_ctcal(0.5)).with_steps(60);
    let saved = parse(
        "[train]\nsteps = 30\nseed = 7\nbatch_size = 4\n[train.ctcal]\nlambda_ctcal = 2.0\ntau = 0.3\n",
    );
    let config = SettingsFile::parse("[train]\nbatch_size = 8\n", "run.toml").unwrap();
    let layers = Layers {
        files: vec![saved, config],
        flagged: ["steps", "ctcal.lambda_ctcal"].map(String::from).into(),
    };
    let got = layers.train_config(flags.clone()).unwrap();
    let mut want = flags.clone().with_seed(7).with_batch_size(8);
    want.ctcal.tau = 0.3;
    assert_eq!(got, want);
    // Without flags given, the files decide.
    let layers = Layers {
        flagged: Default::default(),
        ..layers
    };
    let got = layers.train_config(flags).unwrap();
    assert_eq!((got.steps, got.ctcal.lambda_ctcal), (30, 2.0));
}

/// No bytes make reading a settings file panic: mutated resolved files (flipped, inserted and
/// dropped bytes, cuts) either read or give an error that names the file.
#[test]
fn mutated_files_read_or_fail_cleanly() {
    use rand::{Rng, SeedableRng};
    let text = render(&toml::Table::new(), &unusual()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let base = TrainConfig::new(CtcalConfig::sd21());
    let (mut read, mut refused) = (0, 0);
    for _ in 0..400 {
        let mut bytes = text.clone().into_bytes();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..bytes.len());
            match rng.random_range(0..4) {
                0 => bytes[at] = rng.random(),
                1 => bytes.insert(at, b"=[]{}\".\n0e"[rng.random_range(0..10)]),
                2 => {
                    bytes.remove(at);
                }
                _ => bytes.truncate(at),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        match SettingsFile::parse(&text, "run.toml").and_then(|f| f.train_config(&base)) {
            Ok(_) => read += 1,
            Err(e) => {
                assert!(e.to_string().contains("run.toml"), "{e}");
                refused += 1;
            }
        }
    }
    // Both outcomes happen, so the mutations reach the reader's error paths and its success.
    assert!(read > 0 && refused > 0, "{read} read, {refused} refused");
}
