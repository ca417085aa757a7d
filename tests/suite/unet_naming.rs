//! Full-size naming without weights: our SD 2.1 / SD 1.5 module paths against the key manifests
//! diffusers wrote for the published configs (`tests/fixtures/manifests`), and the presets
//! against the published `config.json`s.

use crate::common::fixture;
use ctcal::unet::UNet2DConditionConfig;
use ctcal::weights::expected_keys;

fn manifest(name: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixture(&format!("manifests/{name}.txt"))).unwrap();
    text.lines()
        .map(|line| {
            let (key, shape) = line.split_once(' ').unwrap();
            let shape: Vec<usize> = serde_json::from_str(shape).unwrap();
            (key.to_string(), shape)
        })
        .collect()
}

fn check(name: &str, config: UNet2DConditionConfig) {
    // Parsing the published config gives the preset.
    let parsed = UNet2DConditionConfig::from_diffusers_json(&fixture(&format!(
        "manifests/{name}.config.json"
    )))
    .unwrap();
    assert_eq!(parsed, config);
    // Every key and shape agrees. Building the full model allocates its weights once.
    let unet = config.init::<crate::common::Cpu>(&Default::default());
    let ours = expected_keys(&unet);
    let theirs = manifest(name);
    let missing: Vec<_> = theirs
        .iter()
        .filter(|k| !ours.contains(k))
        .take(5)
        .collect();
    let extra: Vec<_> = ours
        .iter()
        .filter(|k| !theirs.contains(k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(ours.len(), theirs.len());
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
