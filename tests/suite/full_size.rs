//! Full-size checks. SD 2.1: a random checkpoint written locally by diffusers loads into `sd21()` and
//! reproduces diffusers' output. Ignored by default (3.5 GB of weights, not committed):
//!
//! ```text
//! bash scripts/make_fixtures.sh --full-size local/sd21
//! cargo test --release --test full_size -- --ignored --nocapture
//! ```
//! `CTCAL_SD21_DIR` overrides the folder.

use std::path::PathBuf;
use std::time::Instant;

use crate::common::{Cpu, rel_err, values};
use ctcal::unet::UNet2DConditionConfig;
use ctcal::weights::{TensorFile, load_module};

#[test]
#[ignore = "needs a full-size checkpoint: bash scripts/make_fixtures.sh --full-size local/sd21"]
fn sd21_full_size_loads_and_matches_diffusers() {
    let dir = std::env::var("CTCAL_SD21_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("local/sd21"));
    let device = Default::default();
    let start = Instant::now();
    let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("unet/config.json")).unwrap();
    assert_eq!(config, UNet2DConditionConfig::sd21());
    let (unet, report) = load_module(config.init::<Cpu>(&device), &dir.join("unet"), None).unwrap();
    println!(
        "loaded {} tensors in {:.1} s",
        report.tensors,
        start.elapsed().as_secs_f64()
    );
    assert_eq!(report.tensors, 686);

    let inputs = TensorFile::read(&dir.join("inputs.safetensors")).unwrap();
    let expected = TensorFile::read(&dir.join("outputs.safetensors")).unwrap();
    let start = Instant::now();
    let out = unet.forward(
        inputs.tensor("sample", &device).unwrap(),
        inputs.tensor("timestep", &device).unwrap(),
        inputs.tensor("encoder_hidden_states", &device).unwrap(),
    );
    let err = rel_err(&values(out), &expected.tensors["out"].1);
    println!(
        "forward in {:.1} s, relative error {err:.2e}",
        start.elapsed().as_secs_f64()
    );
    assert!(err < 1e-3, "relative error {err}");
}

/// Full-size SD 3 medium: a random 2B-parameter checkpoint written locally by diffusers (8.3 GB
/// in five shards) loads into `sd3_medium()` and reproduces diffusers' output at 32x32 latents
/// with 333 text tokens. Ignored by default:
///
/// ```text
/// .venv/bin/python scripts/make_fixtures.py --full-size-sd3 local/sd3_medium
/// cargo test --release --test suite sd3_medium_full_size -- --ignored --nocapture
/// ```
/// `CTCAL_SD3_DIR` overrides the folder.
#[test]
#[ignore = "needs a full-size checkpoint: scripts/make_fixtures.py --full-size-sd3 local/sd3_medium"]
fn sd3_medium_full_size_loads_and_matches_diffusers() {
    use ctcal::mmdit::SD3Transformer2DConfig;
    let dir = std::env::var("CTCAL_SD3_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("local/sd3_medium"));
    let device = Default::default();
    let start = Instant::now();
    let folder = dir.join("transformer");
    let config = SD3Transformer2DConfig::from_diffusers_json(&folder.join("config.json")).unwrap();
    assert_eq!(config, SD3Transformer2DConfig::sd3_medium());
    let (model, report) = load_module(config.init::<Cpu>(&device), &folder, None).unwrap();
    println!(
        "loaded {} tensors from {} files in {:.1} s",
        report.tensors,
        report.files.len(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(report.tensors, 683);

    let inputs = TensorFile::read(&dir.join("inputs.safetensors")).unwrap();
    let expected = TensorFile::read(&dir.join("outputs.safetensors")).unwrap();
    let start = Instant::now();
    let out = model.forward(
        inputs.tensor("hidden_states", &device).unwrap(),
        inputs.tensor("timestep", &device).unwrap(),
        inputs.tensor("encoder_hidden_states", &device).unwrap(),
        inputs.tensor("pooled_projections", &device).unwrap(),
    );
    let err = rel_err(&values(out), &expected.tensors["out"].1);
    println!(
        "forward in {:.1} s, relative error {err:.2e}",
        start.elapsed().as_secs_f64()
    );
    assert!(err < 1e-3, "relative error {err}");
}
