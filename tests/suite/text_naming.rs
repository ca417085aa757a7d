//! Full-size text-encoder naming without weights: our module paths and shapes against the key
//! manifests transformers wrote for the published SD 2.1 and SD 3 configs, and the presets
//! against those configs.

use crate::common::{Cpu, assert_same_keys, fixture, manifest};
use ctcal::text::{ClipTextConfig, T5Config};
use ctcal::weights::expected_keys;

fn config_path(name: &str) -> std::path::PathBuf {
    fixture(&format!("manifests/{name}.config.json"))
}

#[test]
fn sd21_text_encoder_keys_match_manifest() {
    let name = "sd21_text_encoder";
    let config = ClipTextConfig::from_transformers_json(&config_path(name)).unwrap();
    assert_eq!(config, ClipTextConfig::sd21());
    let model = config.init::<Cpu>(&Default::default());
    assert_same_keys(&expected_keys(&model), &manifest(name));
}

#[test]
fn sd3_clip_keys_match_manifests() {
    for (name, preset) in [
        ("sd3_text_encoder", ClipTextConfig::sd3_clip_l()),
        ("sd3_text_encoder_2", ClipTextConfig::sd3_clip_g()),
    ] {
        let config = ClipTextConfig::from_transformers_json(&config_path(name)).unwrap();
        assert_eq!(config, preset, "{name}");
        let model = config.init_with_projection::<Cpu>(&Default::default());
        assert_same_keys(&expected_keys(&model), &manifest(name));
    }
}

#[test]
fn sd3_t5_keys_match_manifest() {
    let name = "sd3_text_encoder_3";
    let config = T5Config::from_transformers_json(&config_path(name)).unwrap();
    assert_eq!(config, T5Config::sd3_t5_xxl());
    let model = config.init::<Cpu>(&Default::default()).unwrap();
    assert_same_keys(&expected_keys(&model), &manifest(name));
}
