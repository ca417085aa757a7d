//! Short default-setting training runs lower the loss: the mean of the last five steps is
//! below the mean of the first five, for the total and the CTCal term. One is the embedded
//! default of `cargo run --release --example train_sd21` (the shipped shapes UNet, LoRA rank 4,
//! the bundled images `weights/shapes-data` through the shapes pipeline, 30 steps of batch 2
//! at lr 1e-4, seed 0); the other the same on the tiny random SD 3 transformer of
//! `weights/tiny-sd3` with the cached features of `weights/tiny-data`.

use std::path::Path;
use std::sync::Arc;

use burn::backend::Autodiff;
use ctcal::ctcal::{CtcalConfig, Schedule};
use ctcal::data::{BadRowPolicy, CachedFeatures, ImageFolder};
use ctcal::lora::{LoraConfig, apply_lora};
use ctcal::mmdit::SD3Transformer2DConfig;
use ctcal::pipeline::ImageInputs;
use ctcal::schedule::FlowConfig;
use ctcal::shapes::load_shapes_pipeline;
use ctcal::train::{RunDirs, StepLog, TrainConfig, Trained, train};
use ctcal::unet::UNet2DConditionModel;
use ctcal::weights::load_module;

use crate::common::Cpu;

#[test]
fn tiny_sd3_cached_features_run_lowers_the_loss() {
    let device = Default::default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("weights/tiny-sd3/transformer");
    let config = SD3Transformer2DConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let (model, _) = load_module(config.init::<Autodiff<Cpu>>(&device), &dir, None).unwrap();
    let (model, _) = apply_lora(model, &LoraConfig::mmdit_default(), 0).unwrap();
    let meta = root.join("weights/tiny-data/metadata.jsonl");
    let dataset = Arc::new(CachedFeatures::open(&meta, BadRowPolicy::Fail).unwrap());
    let schedule = Schedule::Flow(FlowConfig::sd3_medium().init());
    let config = TrainConfig::new(CtcalConfig::sd3())
        .with_steps(30)
        .with_batch_size(2)
        .with_lr(1e-4)
        .with_checkpoint_every(0);
    let out = std::env::temp_dir().join(format!("ctcal-default-{}", std::process::id()));
    let dirs = RunDirs {
        out: out.clone(),
        resume: false,
    };
    let mut logs: Vec<StepLog> = Vec::new();
    train(
        model,
        Trained::Lora,
        dataset,
        &schedule,
        &config,
        &dirs,
        &|_: &str| 1,
        &device,
        |l, _| {
            logs.push(l.clone());
            Ok(())
        },
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
    let (model, _) = apply_lora(unet, &arch.lora(4), 0).unwrap();
    let meta = root.join("weights/shapes-data/metadata.jsonl");
    let dataset = Arc::new(ImageFolder::open(&meta, 32, BadRowPolicy::Fail).unwrap());
    let config = TrainConfig::new(arch.ctcal())
        .with_steps(30)
        .with_batch_size(2)
        .with_lr(1e-4)
        .with_checkpoint_every(0);
    let out = std::env::temp_dir().join(format!("ctcal-shapes-default-{}", std::process::id()));
    let dirs = RunDirs {
        out: out.clone(),
        resume: false,
    };
    let inputs = ImageInputs {
        pipeline: &pipe,
        sample_posterior: true,
    };
    let mut logs: Vec<StepLog> = Vec::new();
    train(
        model,
        Trained::Lora,
        dataset,
        &arch.schedule(),
        &config,
        &dirs,
        &inputs,
        &device,
        |l, _| {
            logs.push(l.clone());
            Ok(())
        },
    )
    .unwrap();
    assert_lowered(&logs);
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
