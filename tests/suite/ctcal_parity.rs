//! The whole CTCal step against a float64 PyTorch recomputation (`scripts/make_fixtures.py`,
//! `ctcal_reference`, `fixtures_sd3.py`): same tiny SD 2 UNet or SD 3 MMDiT, auto-encoder
//! weights, noise, timesteps or sigmas, and nouns.

use std::collections::HashMap;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::calibration::{
    CtcalConfig, LossParts, MapAutoEncoderConfig, StepDraw, TrainBatch, ctcal_step,
};
use ctcal::denoiser::{Denoiser, TextCond};
use ctcal::mmdit::SD3Transformer2DConfig;
use ctcal::nouns::NounGroups;
use ctcal::schedule::Schedule;
use ctcal::schedule::{DdpmConfig, FlowConfig};
use ctcal::unet::UNet2DConditionConfig;
use ctcal::weights::{CheckpointFiles, TensorFile, load_files, load_module};

use crate::common::fixture;

/// Loads a case's inputs and runs one step of `model` under `schedule`.
fn step_case<B, M>(
    case: &str,
    model: &M,
    schedule: Schedule,
    config: CtcalConfig,
    device: &B::Device,
) -> LossParts
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Denoiser<B>,
    M::InnerModule: Denoiser<B::InnerBackend>,
{
    let ae_file = CheckpointFiles::single(fixture(&format!("{case}/autoencoder.safetensors")));
    let (ae, _) = load_files(MapAutoEncoderConfig::new().init::<B>(device), &ae_file).unwrap();

    let inputs = TensorFile::read(&fixture(&format!("{case}/inputs.safetensors"))).unwrap();
    let nouns: Vec<Vec<Vec<usize>>> = serde_json::from_str(&inputs.metadata["nouns"]).unwrap();
    let levels =
        |name: &str| -> Vec<f64> { inputs.tensors[name].1.iter().map(|&v| v as f64).collect() };
    let pooled = inputs
        .tensors
        .contains_key("pooled_projections")
        .then(|| inputs.tensor::<B, 2>("pooled_projections", device).unwrap());
    let batch = TrainBatch {
        latents: inputs.tensor::<B, 4>("latents", device).unwrap(),
        cond: TextCond {
            hidden: inputs
                .tensor::<B, 3>("encoder_hidden_states", device)
                .unwrap(),
            pooled,
        },
        nouns: nouns.into_iter().map(NounGroups).collect(),
        teacher: None,
    };
    let draw = StepDraw {
        noise: inputs.tensor::<B, 4>("noise", device).unwrap(),
        student: levels("student"),
        teacher: levels("teacher"),
    };
    let out = ctcal_step(model, &ae, &batch, &draw, &schedule, &config).unwrap();
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

/// The SD 2 case: tiny UNet, DDPM v-prediction, maps of the two top levels.
fn run_sd2<B: AutodiffAttentionBackend>(device: &B::Device) -> LossParts {
    let dir = fixture("unet_sd2/unet");
    let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let (unet, _) = load_module(config.init::<B>(device), &dir, None).unwrap();
    let config = CtcalConfig::sd21()
        .with_layer_downscales(vec![1, 2])
        .with_map_downscale(2);
    let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
    step_case("ctcal_sd2", &unet, schedule, config, device)
}

/// The SD 3 case: tiny MMDiT, rectified flow (sigmas given), every joint block's map.
fn run_sd3<B: AutodiffAttentionBackend>(device: &B::Device) -> LossParts {
    let dir = fixture("mmdit_sd3/transformer");
    let config = SD3Transformer2DConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let (model, _) = load_module(config.init::<B>(device), &dir, None).unwrap();
    let schedule = Schedule::Flow(FlowConfig::sd3_medium().init());
    step_case("ctcal_sd3", &model, schedule, CtcalConfig::sd3(), device)
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

fn expected(case: &str) -> HashMap<&'static str, f64> {
    let text = std::fs::read_to_string(fixture(&format!("{case}/expected.json"))).unwrap();
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
    let parts = run_sd2::<Autodiff<crate::common::Cpu>>(&Default::default());
    assert!(parts.ctcal > 0.0 && parts.semantic > 0.0);
    assert_close(&parts, &expected("ctcal_sd2"), "ndarray");
}

#[test]
fn mmdit_ctcal_step_matches_pytorch_ndarray() {
    let parts = run_sd3::<Autodiff<crate::common::Cpu>>(&Default::default());
    assert!(parts.ctcal > 0.0 && parts.semantic > 0.0);
    assert_close(&parts, &expected("ctcal_sd3"), "ndarray mmdit");
}

/// The SD 2 step on wgpu: matches PyTorch, hence ndarray, within 1e-4. The loss and the map
/// capture are backend-generic code, checked on wgpu here; the MMDiT's own wgpu path is checked
/// by `mmdit_parity` (its step here took about 100 of this test's 200 s under Mesa's software
/// Vulkan, where CI's time is short).
#[cfg(feature = "wgpu")]
#[test]
fn ctcal_step_matches_pytorch_wgpu() {
    let device = Default::default();
    let parts = run_sd2::<Autodiff<crate::common::Gpu>>(&device);
    assert_close(&parts, &expected("ctcal_sd2"), "wgpu");
}
