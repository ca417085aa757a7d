//! Full-size VAE naming without weights: our SD 2.1 / SD 3 medium `AutoencoderKL` module paths
//! against the key manifests diffusers wrote for the published configs
//! (`tests/fixtures/manifests`), and the presets against the published `config.json`s.

use crate::common::{Cpu, assert_same_keys, fixture, manifest};
use ctcal::vae::AutoencoderKLConfig;
use ctcal::weights::expected_keys;

fn check(name: &str, config: AutoencoderKLConfig) {
    let parsed = AutoencoderKLConfig::from_diffusers_json(&fixture(&format!(
        "manifests/{name}.config.json"
    )))
    .unwrap();
    assert_eq!(parsed, config);
    let vae = config.init::<Cpu>(&Default::default()).unwrap();
    assert_same_keys(&expected_keys(&vae), &manifest(name));
}

#[test]
fn sd21_vae_keys_match_diffusers_manifest() {
    check("sd21_vae", AutoencoderKLConfig::sd21());
}

#[test]
fn sd3_medium_vae_keys_match_diffusers_manifest() {
    check("sd3_medium_vae", AutoencoderKLConfig::sd3_medium());
}
