//! The training API as a model zoo calls it: a shapes MMDiT fine-tuned with LoRA through
//! `Trainer` in a few lines, stopped after 2 steps and resumed to 3, ends bit for bit where an
//! uninterrupted 3-step run ends (the exported adapters and the last loss), as does one stopped
//! by a time limit after its first step and resumed; each checkpoint holds its step's adapters
//! and resolved settings, and only the newest ones are kept.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use burn::backend::Autodiff;
use ctcal::calibration::CtcalConfig;
use ctcal::data::{BadRowPolicy, ImageFolder};
use ctcal::mmdit::SD3Transformer2DModel;
use ctcal::pipeline::shapes::load_shapes_pipeline;
use ctcal::train::{SettingsFile, TrainConfig, Trainer, saved_settings};
use ctcal::weights::TensorFile;

use crate::common::Cpu;

#[test]
fn a_run_resumed_through_the_public_api_equals_an_uninterrupted_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = std::env::temp_dir().join(format!("ctcal-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let fit_limited = |out: &Path, steps: usize, resume: bool, limit: Option<Duration>| {
        let device = Default::default();
        let model_dir = root.join("weights/shapes-mmdit");
        let (pipe, mmdit) =
            load_shapes_pipeline::<Autodiff<Cpu>, SD3Transformer2DModel<_>>(&model_dir, &device)?;
        let meta = root.join("weights/shapes-data/metadata.jsonl");
        let data = Arc::new(ImageFolder::open(&meta, 32, BadRowPolicy::Fail)?);
        let config = TrainConfig::new(pipe.arch.ctcal())
            .with_steps(steps)
            .with_batch_size(2)
            .with_checkpoint_every(1)
            .with_checkpoints_total_limit(2);
        let mut run = toml::Table::new();
        run.insert("pipeline".into(), "weights/shapes-mmdit".into());
        let mut trainer = Trainer::new(config);
        if let Some(limit) = limit {
            trainer = trainer.time_limit(limit);
        }
        trainer
            .settings(run)
            .tensorboard(true)
            .output_dir(out)
            .model_card("weights/shapes-mmdit")
            .resume(resume)
            .lora(pipe.arch.lora(4))
            .fit(mmdit, &pipe, data, &pipe.arch.schedule(), &device)
    };
    let fit = |out: &Path, steps: usize, resume: bool| fit_limited(out, steps, resume, None);
    let (split, whole) = (base.join("split"), base.join("whole"));
    fit(&split, 2, false).unwrap();
    let resumed = fit(&split, 3, true).unwrap();
    let uninterrupted = fit(&whole, 3, false).unwrap();

    assert_eq!(resumed.start_step, 2);
    assert_eq!(resumed.logs.len(), 1);
    let last = |f: &ctcal::train::Fitted<_, _>| f.logs.last().map(|l| l.loss.total);
    assert_eq!(last(&resumed), last(&uninterrupted));
    let adapters = |dir: &Path| {
        let file = TensorFile::read(&dir.join("pytorch_lora_weights.safetensors")).unwrap();
        // A and B of 8 projections in each of 4 joint blocks, the last without `to_add_out`.
        assert_eq!(file.tensors.len(), 2 * 31);
        file.tensors
    };
    assert!(
        adapters(&split) == adapters(&whole),
        "the resumed run differs"
    );

    // A time limit stops the run after the first step past it, checkpointed and exported;
    // resumed without one, the run ends where the uninterrupted one does.
    let limited = base.join("limited");
    let stopped = fit_limited(&limited, 3, false, Some(Duration::ZERO)).unwrap();
    assert_eq!((stopped.start_step, stopped.end_step), (0, 1));
    assert_eq!(stopped.logs.len(), 1);
    let latest = std::fs::read_to_string(limited.join("checkpoints/latest")).unwrap();
    assert_eq!(latest, "step-0000001");
    assert!(adapters(&limited) != adapters(&whole));
    let card = std::fs::read_to_string(limited.join("README.md")).unwrap();
    assert!(card.contains("| steps | 1 |"), "{card}");
    let finished = fit(&limited, 3, true).unwrap();
    assert_eq!((finished.start_step, finished.end_step), (1, 3));
    assert!(
        adapters(&limited) == adapters(&whole),
        "the run resumed after its time limit differs"
    );

    // Each checkpoint holds the adapters of its step, as diffusers' scripts save them; the
    // total limit keeps the newest two.
    let checkpoints = whole.join("checkpoints");
    let mut kept: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["latest", "step-0000002", "step-0000003"]);
    let bytes = |dir: &Path| std::fs::read(dir.join("pytorch_lora_weights.safetensors")).unwrap();
    assert_eq!(bytes(&checkpoints.join("step-0000003")), bytes(&whole));
    assert!(adapters(&checkpoints.join("step-0000002")) != adapters(&whole));
    assert_eq!(
        bytes(&checkpoints.join("step-0000002")),
        bytes(&split.join("checkpoints/step-0000002")),
    );

    // The model card diffusers' scripts write, with this run's settings.
    let card = std::fs::read_to_string(whole.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\nbase_model: \"weights/shapes-mmdit\"\n")
            && card.contains("| steps | 3 |")
            && card.contains("LoRA adapters (rank 4)"),
        "{card}"
    );

    // The resolved settings, in the output folder and in each checkpoint: a resumed run reads
    // those of its latest checkpoint, the run's own keys and its whole config.
    let other = TrainConfig::new(CtcalConfig::sd21()).with_seed(9);
    for (dir, steps) in [
        (whole.clone(), 3),
        (checkpoints.join("step-0000003"), 3),
        (split.join("checkpoints/step-0000002"), 2),
    ] {
        let file = SettingsFile::read(&dir.join("config.toml")).unwrap();
        let config = file.train_config(&other).unwrap();
        assert_eq!(
            (config.steps, config.seed, config.batch_size),
            (steps, 0, 2)
        );
        assert_eq!(config.ctcal, uninterrupted_ctcal());
        assert_eq!(
            file.run_keys()["pipeline"].as_str(),
            Some("weights/shapes-mmdit")
        );
    }
    let saved = saved_settings(&split).unwrap().unwrap();
    assert!(
        saved.origin.ends_with("step-0000003/config.toml"),
        "{}",
        saved.origin
    );

    // TensorBoard: an event file per start of the run: the version record, the map preview
    // before, a record of scalars per step, the preview after.
    let events = |out: &Path| {
        let mut files: Vec<_> = std::fs::read_dir(out.join("logs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| tfrecords(&std::fs::read(f).unwrap()))
            .collect::<Vec<_>>()
    };
    let whole_events = events(&whole);
    assert_eq!(whole_events.len(), 1);
    assert_eq!(whole_events[0].len(), 1 + 3 + 2);
    let has = |record: &[u8], tag: &str| record.windows(tag.len()).any(|w| w == tag.as_bytes());
    for record in &whole_events[0][2..5] {
        for tag in ["loss/total", "loss/ctcal", "lr", "step_time", "grad_norm"] {
            assert!(has(record, tag), "a step record lacks {tag}");
        }
    }
    for i in [1, 5] {
        assert!(has(&whole_events[0][i], "maps") && has(&whole_events[0][i], "IHDR"));
    }
    let split_events = events(&split);
    let lengths: Vec<usize> = split_events.iter().map(Vec::len).collect();
    assert_eq!(lengths, [1 + 2 + 2, 1 + 1 + 2]);
    assert!(
        saved.origin.ends_with("step-0000003/config.toml"),
        "{}",
        saved.origin
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// The records of a TFRecord file (each length and its checksum word skipped, not checked:
/// `train::tensorboard`'s tests prove the framing against TensorBoard's own files).
fn tfrecords(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        records.push(rest[12..12 + len].to_vec());
        rest = &rest[12 + len + 4..];
    }
    records
}

/// The CTCal config the runs above train with.
fn uninterrupted_ctcal() -> CtcalConfig {
    ctcal::pipeline::shapes::ShapesArch::Mmdit.ctcal()
}
