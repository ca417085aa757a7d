//! Full-size MMDiT naming without weights: our SD 3 / 3.5 module paths and shapes against the
//! key manifests diffusers wrote for the published configs, and the presets against the
//! published `config.json`s.

use crate::common::{assert_same_keys, fixture, manifest};
use ctcal::mmdit::SD3Transformer2DConfig;
use ctcal::weights::expected_keys;

fn check(name: &str, config: SD3Transformer2DConfig) {
    let parsed = SD3Transformer2DConfig::from_diffusers_json(&fixture(&format!(
        "manifests/{name}.config.json"
    )))
    .unwrap();
    assert_eq!(parsed, config);
    // Parameters are lazy: listing them allocates nothing.
    let model = config.init::<crate::common::Cpu>(&Default::default());
    assert_same_keys(&expected_keys(&model), &manifest(name));
}

#[test]
fn sd3_medium_keys_match_diffusers_manifest() {
    check(
        "sd3_medium_transformer",
        SD3Transformer2DConfig::sd3_medium(),
    );
}

#[test]
fn sd35_medium_keys_match_diffusers_manifest() {
    check(
        "sd35_medium_transformer",
        SD3Transformer2DConfig::sd35_medium(),
    );
}

#[test]
fn sd35_large_keys_match_diffusers_manifest() {
    check(
        "sd35_large_transformer",
        SD3Transformer2DConfig::sd35_large(),
    );
}

/// The embedded default of `mmdit_forward` (`weights/tiny-sd3`) is the `tiny()` preset.
#[test]
fn embedded_tiny_is_the_tiny_preset() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights/tiny-sd3/transformer/config.json");
    let parsed = SD3Transformer2DConfig::from_diffusers_json(&path).unwrap();
    assert_eq!(parsed, SD3Transformer2DConfig::tiny());
}
