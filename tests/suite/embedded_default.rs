//! Short default-setting training runs lower the loss: the mean of the last five steps is
//! below the mean of the first five, for the total and the CTCal term. One is the embedded
//! default of `cargo run --release --example train_sd21` (the shipped shapes UNet, LoRA rank 4,
//! the bundled images `weights/shapes-data` through the shapes pipeline, 30 steps of batch 2
//! at lr 1e-4, seed 0); the other the same on the tiny random SD 3 transformer of
//! `weights/tiny-sd3` with the cached features of `weights/tiny-data`.

use std::path::Path;
use std::sync::Arc;

use burn::backend::Autodiff;
use ctcal::calibration::CtcalConfig;
use ctcal::data::{BadRowPolicy, CachedFeatures, ImageFolder};
use ctcal::lora::LoraConfig;
use ctcal::mmdit::SD3Transformer2DConfig;
use ctcal::nouns::CountedTokens;
use ctcal::pipeline::shapes::load_shapes_pipeline;
use ctcal::schedule::{FlowConfig, Schedule};
use ctcal::train::{CachedInputs, Event, StepLog, TrainConfig, Trainer};
use ctcal::unet::UNet2DConditionModel;
use ctcal::weights::load_module;

use crate::common::Cpu;

/// 30 steps of batch 2 at lr 1e-4, seed 0, checkpoints only at the end, into a fresh folder.
fn trainer<'a>(config: TrainConfig, out: &Path, logs: &'a mut Vec<StepLog>) -> Trainer<'a> {
    let config = config
        .with_steps(30)
        .with_batch_size(2)
        .with_lr(1e-4)
        .with_checkpoint_every(0);
    let _ = std::fs::remove_dir_all(out);
    Trainer::new(config).output_dir(out).listen(|event| {
        if let Event::Step(log) = event {
            logs.push((*log).clone())
        }
    })
}

#[test]
fn tiny_sd3_cached_features_run_lowers_the_loss() {
    let device = Default::default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("weights/tiny-sd3/transformer");
    let config = SD3Transformer2DConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let (model, _) = load_module(config.init::<Autodiff<Cpu>>(&device), &dir, None).unwrap();
    let meta = root.join("weights/tiny-data/metadata.jsonl");
    let dataset = Arc::new(CachedFeatures::open(&meta, BadRowPolicy::Fail).unwrap());
    let schedule = Schedule::Flow(FlowConfig::sd3_medium().init());
    let out = std::env::temp_dir().join(format!("ctcal-default-{}", std::process::id()));
    let mut logs = Vec::new();
    trainer(TrainConfig::new(CtcalConfig::sd3()), &out, &mut logs)
        .lora(LoraConfig::mmdit_default())
        .fit(
            model,
            &CachedInputs(CountedTokens(|_: &str| 1)),
            dataset,
            &schedule,
            &device,
        )
        .unwrap();
    assert_lowered(&logs);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn embedded_default_run_lowers_the_loss() {
    let device = Default::default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (pipe, unet) = load_shapes_pipeline::<Autodiff<Cpu>, UNet2DConditionModel<_>>(
        &root.join("weights/shapes-unet"),
        &device,
    )
    .unwrap();
    let arch = pipe.arch;
    let meta = root.join("weights/shapes-data/metadata.jsonl");
    let dataset = Arc::new(ImageFolder::open(&meta, 32, BadRowPolicy::Fail).unwrap());
    let out = std::env::temp_dir().join(format!("ctcal-shapes-default-{}", std::process::id()));
    let mut logs = Vec::new();
    trainer(TrainConfig::new(arch.ctcal()), &out, &mut logs)
        .lora(arch.lora(4))
        .fit(unet, &pipe, dataset, &arch.schedule(), &device)
        .unwrap();
    assert_lowered(&logs);
    for file in [
        "pytorch_lora_weights.safetensors",
        "maps_start.png",
        "maps_end.png",
        "loss.png",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn assert_lowered(logs: &[StepLog]) {
    let mean = |f: &dyn Fn(&StepLog) -> f64, r: std::ops::Range<usize>| {
        logs[r.clone()].iter().map(f).sum::<f64>() / r.len() as f64
    };
    for (name, f) in [
        (
            "total",
            &(|l: &StepLog| l.loss.total) as &dyn Fn(&StepLog) -> f64,
        ),
        ("ctcal", &|l: &StepLog| l.loss.ctcal),
    ] {
        let (first, last) = (mean(f, 0..5), mean(f, 25..30));
        assert!(
            last < first,
            "{name}: first five {first:.4}, last five {last:.4}"
        );
    }
}
