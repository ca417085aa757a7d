//! The VAE against diffusers' `AutoencoderKL`: posterior mean and log-variance, decode of a
//! given latent and the encode-decode round trip of the tiny fixtures written by
//! `scripts/fixtures_vae.py`, within relative error 1e-4 (f32); loading the pre-0.14 attention
//! names; config and weight errors that name the field or key.

use std::path::{Path, PathBuf};

use crate::common::{Cpu, fixture, rel_err, values};
use burn::tensor::backend::Backend;
use ctcal::vae::{AutoencoderKL, AutoencoderKLConfig};
use ctcal::weights::{TensorFile, load_module, write_tensor_file};

const TOL: f32 = 1e-4;

fn load_vae<B: Backend>(dir: &Path, device: &B::Device) -> ctcal::Result<AutoencoderKL<B>> {
    let config = AutoencoderKLConfig::from_diffusers_json(&dir.join("config.json"))?;
    let (vae, report) = load_module(config.init::<B>(device)?, dir, None)?;
    assert!(report.tensors > 50, "{report:?}");
    Ok(vae)
}

/// Runs `case` with the weights in `weights` and checks every output against diffusers.
fn check_case<B: ctcal::backend::KernelBackend>(case: &str, weights: &Path, device: &B::Device) {
    let vae = load_vae::<B>(weights, device).unwrap();
    let inputs = TensorFile::read(&fixture(case).join("inputs.safetensors")).unwrap();
    let expected = TensorFile::read(&fixture(case).join("outputs.safetensors")).unwrap();
    let check = |name: &str, got: Vec<f32>| {
        let err = rel_err(&got, &expected.tensors[name].1);
        assert!(err < TOL, "{case}: {name} relative error {err}");
        eprintln!("{case}: {name} relative error {err:.2e}");
    };
    let posterior = vae.encode(inputs.tensor("image", device).unwrap()).unwrap();
    check("mean", values(posterior.mean.clone()));
    check("logvar", values(posterior.logvar.clone()));
    let decoded = vae
        .decode(inputs.tensor("latent", device).unwrap())
        .unwrap();
    check("decoded", values(decoded));
    check("round_trip", values(vae.decode(posterior.mode()).unwrap()));
}

#[test]
fn sd2_layout_matches_diffusers_ndarray() {
    check_case::<Cpu>("vae_sd2", &fixture("vae_sd2/vae"), &Default::default());
}

#[test]
fn sd3_layout_matches_diffusers_ndarray() {
    check_case::<Cpu>("vae_sd3", &fixture("vae_sd3/vae"), &Default::default());
}

#[cfg(feature = "wgpu-every-model")]
#[test]
fn sd2_layout_matches_diffusers_wgpu() {
    check_case::<crate::common::Gpu>("vae_sd2", &fixture("vae_sd2/vae"), &Default::default());
}

/// A copy of the `vae_sd2` fixture's `vae/` folder with its weights passed through `edit`.
fn scratch(name: &str, edit: impl FnOnce(&mut TensorFile)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ctcal-vae-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("vae_sd2/vae");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut file = TensorFile::read(&src.join("diffusion_pytorch_model.safetensors")).unwrap();
    edit(&mut file);
    let path = dir.join("diffusion_pytorch_model.safetensors");
    write_tensor_file(&path, &file.tensors, None).unwrap();
    dir
}

/// Checkpoints saved before diffusers 0.14 name the mid-block attention
/// `query`/`key`/`value`/`proj_attn`: they load and give diffusers' outputs.
#[test]
fn legacy_attention_names_load() {
    let dir = scratch("legacy", |file| {
        let mut renamed = 0;
        for coder in ["encoder", "decoder"] {
            for (new, old) in [
                ("to_q", "query"),
                ("to_k", "key"),
                ("to_v", "value"),
                ("to_out.0", "proj_attn"),
            ] {
                for p in ["weight", "bias"] {
                    let at = |n: &str| format!("{coder}.mid_block.attentions.0.{n}.{p}");
                    let tensor = file.tensors.remove(&at(new)).unwrap();
                    file.tensors.insert(at(old), tensor);
                    renamed += 1;
                }
            }
        }
        assert_eq!(renamed, 16);
    });
    check_case::<Cpu>("vae_sd2", &dir, &Default::default());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mis_shaped_weight_names_the_key() {
    const KEY: &str = "decoder.mid_block.attentions.0.to_v.weight";
    let dir = scratch("shape", |file| {
        let entry = file.tensors.get_mut(KEY).unwrap();
        let n = entry.0[1];
        *entry = (vec![n, n - 1], vec![0.0; n * (n - 1)]);
    });
    let err = load_vae::<Cpu>(&dir, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(KEY) && err.contains("[12, 11]"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_errors_name_the_field() {
    let dir = scratch("config", |_| {});
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let write = |from: &str, to: &str| {
        assert!(text.contains(from), "{from}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        load_vae::<Cpu>(&dir, &Default::default())
            .unwrap_err()
            .to_string()
    };
    let err = write("\"act_fn\"", "\"num_vq_embeddings\": 4, \"act_fn\"");
    assert!(err.contains("`num_vq_embeddings`"), "{err}");
    let err = write("\"norm_num_groups\": 4", "\"norm_num_groups\": 5");
    assert!(err.contains("norm_num_groups = 5"), "{err}");
    let err = write("\"latent_channels\": 4", "\"latent_channels\": \"four\"");
    assert!(
        err.contains("config.json") && err.contains("invalid type"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
