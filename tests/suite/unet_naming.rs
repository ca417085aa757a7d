//! Full-size naming without weights: our SD 2.1 / SD 1.5 module paths against the key manifests
//! diffusers wrote for the published configs (`tests/fixtures/manifests`), and the presets
//! against the published `config.json`s.

use crate::common::{assert_same_keys, fixture, manifest};
use ctcal::unet::UNet2DConditionConfig;
use ctcal::weights::expected_keys;

fn check(name: &str, config: UNet2DConditionConfig) {
    // Parsing the published config gives the preset.
    let parsed = UNet2DConditionConfig::from_diffusers_json(&fixture(&format!(
        "manifests/{name}.config.json"
    )))
    .unwrap();
    assert_eq!(parsed, config);
    // Every key and shape agrees.
    let unet = config.init::<crate::common::Cpu>(&Default::default());
    assert_same_keys(&expected_keys(&unet), &manifest(name));
}

#[test]
fn sd21_keys_match_diffusers_manifest() {
    check("sd21_unet", UNet2DConditionConfig::sd21());
}

#[test]
fn sd15_keys_match_diffusers_manifest() {
    let mut config = UNet2DConditionConfig::sd21_base();
    config.num_attention_heads = vec![8; 4];
    config.cross_attention_dim = 768;
    config.use_linear_projection = false;
    check("sd15_unet", config);
}
