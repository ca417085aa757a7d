//! Whole pipelines against diffusers: the tiny pipelines shipped in `weights/` (loaded from
//! their `model_index.json` folders) generate from the same initial latents, with classifier-
//! free guidance and negative prompts, for a few steps; the final latents and the decoded
//! images match diffusers' `StableDiffusionPipeline` / `StableDiffusion3Pipeline` run in
//! float64 (`scripts/fixtures_pipeline.py`) within relative error 1e-4.

use std::path::PathBuf;

use ctcal::attention::AttentionBackend;
use ctcal::pipeline::{GenerateConfig, Generated, StableDiffusion, StableDiffusion3};
use ctcal::weights::TensorFile;

use crate::common::{Cpu, fixture, rel_err, values};

const TOL: f32 = 1e-4;

pub fn weights(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("weights")
        .join(name)
}

/// The reference run's prompts, negative prompts and settings, and its initial latents.
struct Case {
    inputs: TensorFile,
    expected: TensorFile,
    prompts: Vec<String>,
    negative: Vec<String>,
    config: GenerateConfig,
}

fn case(name: &str) -> Case {
    let inputs = TensorFile::read(&fixture(name).join("inputs.safetensors")).unwrap();
    let expected = TensorFile::read(&fixture(name).join("outputs.safetensors")).unwrap();
    let json =
        |k: &str| -> serde_json::Value { serde_json::from_str(&inputs.metadata[k]).unwrap() };
    let strings = |k: &str| -> Vec<String> { serde_json::from_value(json(k)).unwrap() };
    let call = json("call");
    let mut config = GenerateConfig::new()
        .with_steps(json("steps").as_u64().unwrap() as usize)
        .with_guidance_scale(call["guidance_scale"].as_f64().unwrap());
    if let Some(n) = call["max_sequence_length"].as_u64() {
        config = config.with_max_sequence_length(n as usize);
    }
    Case {
        prompts: strings("prompts"),
        negative: strings("negative"),
        inputs,
        expected,
        config,
    }
}

fn check(name: &str, case: &Case, got: Generated<impl burn::tensor::backend::Backend>) {
    for (key, tensor) in [("latents", got.latents), ("image", got.images)] {
        let err = rel_err(&values(tensor), &case.expected.tensors[key].1);
        eprintln!("{name}: {key} relative error {err:.2e}");
        assert!(err < TOL, "{name}: {key} relative error {err}");
    }
    assert!(got.truncated.is_empty());
}

fn sd21<B: AttentionBackend>(device: &B::Device) {
    let pipe = StableDiffusion::<B>::load(&weights("tiny-sd21"), None, device).unwrap();
    sd21_matches(&pipe, device);
}

/// `pipe`, the tiny SD 2.1 pipeline however it was loaded, generates diffusers' images.
pub fn sd21_matches<B: AttentionBackend>(pipe: &StableDiffusion<B>, device: &B::Device) {
    let c = case("pipeline_sd21");
    let prompts: Vec<&str> = c.prompts.iter().map(String::as_str).collect();
    let negative: Vec<&str> = c.negative.iter().map(String::as_str).collect();
    let latents = c.inputs.tensor("latents", device).unwrap();
    let got = pipe
        .generate(&prompts, Some(&negative), &c.config, Some(latents))
        .unwrap();
    check("pipeline_sd21", &c, got);
}

fn sd3<B: AttentionBackend>(device: &B::Device) {
    let c = case("pipeline_sd3");
    let pipe = StableDiffusion3::<B>::load(&weights("tiny-sd3"), None, device).unwrap();
    let prompts: Vec<&str> = c.prompts.iter().map(String::as_str).collect();
    let negative: Vec<&str> = c.negative.iter().map(String::as_str).collect();
    let latents = c.inputs.tensor("latents", device).unwrap();
    let got = pipe
        .generate(&prompts, Some(&negative), &c.config, Some(latents))
        .unwrap();
    check("pipeline_sd3", &c, got);
}

#[test]
fn sd21_pipeline_matches_diffusers() {
    sd21::<Cpu>(&Default::default());
}

#[test]
fn sd3_pipeline_matches_diffusers() {
    sd3::<Cpu>(&Default::default());
}

/// Seeded generation without given latents: the same seed gives the same image, another seed
/// another one, and the size follows the UNet's `sample_size` times the VAE's factor.
#[test]
fn seeded_generation_is_reproducible() {
    let device = Default::default();
    let pipe = StableDiffusion::<Cpu>::load(&weights("tiny-sd21"), None, &device).unwrap();
    let config = GenerateConfig::new().with_steps(2).with_seed(3);
    let a = pipe
        .generate(&["a red circle"], None, &config, None)
        .unwrap();
    let b = pipe
        .generate(&["a red circle"], None, &config, None)
        .unwrap();
    let c = pipe
        .generate(&["a red circle"], None, &config.clone().with_seed(4), None)
        .unwrap();
    assert_eq!(a.images.dims(), [1, 3, 64, 64]);
    assert_eq!(values(a.images.clone()), values(b.images));
    assert!(rel_err(&values(a.images), &values(c.images)) > 1e-3);
    let bad = config.with_height(Some(31));
    let e = pipe.generate(&["x"], None, &bad, None).unwrap_err();
    assert!(e.to_string().contains("multiples of 2"), "{e}");
}
