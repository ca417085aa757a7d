//! The whole CTCal step against a float64 PyTorch recomputation (`scripts/make_fixtures.py`,
//! `ctcal_reference`): same tiny SD 2 UNet, auto-encoder weights, noise, timesteps and nouns.

use std::collections::HashMap;

use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ctcal::ctcal::{
    CtcalConfig, LossParts, MapAutoEncoderConfig, NounGroups, Schedule, StepDraw, TextCond,
    TrainBatch, ctcal_step,
};
use ctcal::schedule::DdpmConfig;
use ctcal::unet::UNet2DConditionConfig;
use ctcal::weights::{CheckpointFiles, TensorFile, load_files, load_module};

use crate::common::fixture;

fn run_case<B: AutodiffBackend>(device: &B::Device) -> LossParts {
    let dir = fixture("unet_sd2/unet");
    let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let (unet, _) = load_module(config.init::<B>(device), &dir, None).unwrap();
    let ae_file = CheckpointFiles::single(fixture("ctcal_sd2/autoencoder.safetensors"));
    let (ae, _) = load_files(MapAutoEncoderConfig::new().init::<B>(device), &ae_file).unwrap();

    let inputs = TensorFile::read(&fixture("ctcal_sd2/inputs.safetensors")).unwrap();
    let nouns: Vec<Vec<Vec<usize>>> = serde_json::from_str(&inputs.metadata["nouns"]).unwrap();
    let levels =
        |name: &str| -> Vec<f64> { inputs.tensors[name].1.iter().map(|&v| v as f64).collect() };
    let batch = TrainBatch {
        latents: inputs.tensor::<B, 4>("latents", device).unwrap(),
        cond: TextCond {
            hidden: inputs
                .tensor::<B, 3>("encoder_hidden_states", device)
                .unwrap(),
            pooled: None,
        },
        nouns: nouns.into_iter().map(NounGroups).collect(),
    };
    let draw = StepDraw {
        noise: inputs.tensor::<B, 4>("noise", device).unwrap(),
        student: levels("student"),
        teacher: levels("teacher"),
    };
    let config = CtcalConfig::sd21()
        .with_layer_downscales(vec![1, 2])
        .with_map_downscale(2);
    let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
    let out = ctcal_step(&unet, &ae, &batch, &draw, &schedule, &config).unwrap();
    // The loss tensor and the logged total agree.
    let loss = out
        .loss
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap()[0];
    assert!((loss - out.parts.total).abs() <= 1e-6 * loss.abs());
    out.parts
}

fn as_map(p: &LossParts) -> HashMap<&'static str, f64> {
    HashMap::from([
        ("total", p.total),
        ("diffusion", p.diffusion),
        ("ctcal", p.ctcal),
        ("pixel", p.pixel),
        ("semantic", p.semantic),
        ("recon", p.recon),
        ("balance", p.balance),
    ])
}

/// Every part within relative error 1e-4 (absolute 1e-8 for parts that small).
fn assert_close(got: &LossParts, want: &HashMap<&str, f64>, what: &str) {
    for (name, g) in as_map(got) {
        let w = want[name];
        assert!(
            (g - w).abs() <= 1e-4 * w.abs() + 1e-8,
            "{what}: {name} = {g}, expected {w}"
        );
    }
}

fn expected() -> HashMap<&'static str, f64> {
    let text = std::fs::read_to_string(fixture("ctcal_sd2/expected.json")).unwrap();
    let json: HashMap<String, f64> = serde_json::from_str(&text).unwrap();
    [
        "total",
        "diffusion",
        "ctcal",
        "pixel",
        "semantic",
        "recon",
        "balance",
    ]
    .into_iter()
    .map(|k| (k, json[k]))
    .collect()
}

#[test]
fn ctcal_step_matches_pytorch_ndarray() {
    let parts = run_case::<Autodiff<crate::common::Cpu>>(&Default::default());
    assert!(parts.ctcal > 0.0 && parts.semantic > 0.0);
    assert_close(&parts, &expected(), "ndarray");
}

/// The same step on wgpu: matches PyTorch, hence ndarray, within 1e-4.
#[cfg(feature = "wgpu")]
#[test]
fn ctcal_step_matches_pytorch_wgpu() {
    let parts = run_case::<Autodiff<crate::common::Gpu>>(&Default::default());
    assert_close(&parts, &expected(), "wgpu");
}

#[allow(dead_code)]
fn _backend_bound<B: Backend>() {}
