//! The text encoders against transformers, and SD 3's conditioning against diffusers'
//! `StableDiffusion3Pipeline.encode_prompt`: the tiny fixtures of
//! `scripts/fixtures_text_enc.py` (`tests/fixtures/text/`), within relative error 1e-4 (f32).

use std::path::Path;

use burn::tensor::{Int, Tensor, backend::Backend};
use ctcal::text::clip::ClipActivation;
use ctcal::text::sd3::t5_zeros;
use ctcal::text::{
    ClipTextConfig, ClipTextModel, ClipTextModelWithProjection, ClipTextOutput, T5Config,
    T5EncoderModel, load_transformers, sd3_prompt_embeds, sd21_prompt_embeds,
};
use ctcal::weights::TensorFile;

use crate::common::{fixture, rel_err, values};

const TOL: f32 = 1e-4;

fn dir(model: &str) -> std::path::PathBuf {
    fixture("text").join(model)
}

fn outputs() -> TensorFile {
    TensorFile::read(&fixture("text/outputs.safetensors")).unwrap()
}

fn ids<B: Backend>(name: &str, device: &B::Device) -> Tensor<B, 2, Int> {
    let f = TensorFile::read(&fixture("text/inputs.safetensors")).unwrap();
    f.tensor::<B, 2>(name, device).unwrap().int()
}

fn check<B: Backend, const D: usize>(expected: &TensorFile, key: &str, actual: Tensor<B, D>) {
    let (shape, want) = &expected.tensors[key];
    assert_eq!(&actual.dims().to_vec(), shape, "{key} shape");
    let err = rel_err(&values(actual), want);
    eprintln!("{key}: relative error {err:.2e}");
    assert!(err < TOL, "{key}: relative error {err}");
}

fn clip_config(model: &str) -> ClipTextConfig {
    ClipTextConfig::from_transformers_json(&dir(model).join("config.json")).unwrap()
}

pub(crate) fn load_clip<B: Backend>(model: &str, device: &B::Device) -> ClipTextModel<B> {
    let config = clip_config(model);
    load_transformers(config.init::<B>(device), &dir(model), None)
        .unwrap()
        .0
}

fn load_clip_proj<B: Backend>(model: &str, device: &B::Device) -> ClipTextModelWithProjection<B> {
    let config = clip_config(model);
    load_transformers(config.init_with_projection::<B>(device), &dir(model), None)
        .unwrap()
        .0
}

pub(crate) fn load_t5<B: Backend>(device: &B::Device) -> T5EncoderModel<B> {
    let config = T5Config::from_transformers_json(&dir("t5").join("config.json")).unwrap();
    load_transformers(config.init::<B>(device).unwrap(), &dir("t5"), None)
        .unwrap()
        .0
}

/// Every output transformers gave for `model`.
fn check_clip_output<B: Backend>(expected: &TensorFile, model: &str, out: ClipTextOutput<B>) {
    check(
        expected,
        &format!("{model}.last_hidden_state"),
        out.last_hidden_state,
    );
    check(
        expected,
        &format!("{model}.pooler_output"),
        out.pooler_output,
    );
    let hidden = out.hidden_states.expect("hidden states were asked for");
    let count = expected
        .tensors
        .keys()
        .filter(|k| k.starts_with(&format!("{model}.hidden_states.")))
        .count();
    assert_eq!(hidden.len(), count, "{model}: number of hidden states");
    for (i, h) in hidden.into_iter().enumerate() {
        check(expected, &format!("{model}.hidden_states.{i}"), h);
    }
    if let Some(embeds) = out.text_embeds {
        check(expected, &format!("{model}.text_embeds"), embeds);
    }
}

/// `models`: which of the four CLIP fixtures (wgpu runs two, for time: shader compilation
/// per shape dominates on the software driver).
fn check_clip_family<B: ctcal::backend::KernelBackend>(device: &B::Device, models: &[&str]) {
    let expected = outputs();
    for model in ["sd21", "clip_eos"]
        .into_iter()
        .filter(|m| models.contains(m))
    {
        let out = load_clip::<B>(model, device)
            .forward(ids(model, device), true)
            .unwrap();
        check_clip_output(&expected, model, out);
    }
    for model in ["clip_l", "clip_g"]
        .into_iter()
        .filter(|m| models.contains(m))
    {
        let out = load_clip_proj::<B>(model, device)
            .forward(ids(model, device), true)
            .unwrap();
        assert!(out.text_embeds.is_some());
        check_clip_output(&expected, model, out);
    }
}

fn check_t5<B: Backend>(device: &B::Device) {
    let expected = outputs();
    let t5 = load_t5::<B>(device);
    let out = t5.forward(ids("t5", device), None).unwrap();
    check(&expected, "t5.last_hidden_state", out);
    let mask = ids("t5_attention_mask", device);
    let out = t5.forward(ids("t5", device), Some(mask)).unwrap();
    check(&expected, "t5.masked.last_hidden_state", out);
}

#[test]
fn clip_text_models_match_transformers_ndarray() {
    let all = ["sd21", "clip_eos", "clip_l", "clip_g"];
    check_clip_family::<crate::common::Cpu>(&Default::default(), &all);
}

#[test]
fn t5_encoder_matches_transformers_ndarray() {
    check_t5::<crate::common::Cpu>(&Default::default());
}

#[cfg(feature = "wgpu-every-model")]
#[test]
fn clip_text_models_match_transformers_wgpu() {
    // Non-legacy pooling with quick_gelu; legacy pooling with GELU and the projection.
    check_clip_family::<crate::common::Gpu>(&Default::default(), &["clip_eos", "clip_g"]);
}

#[cfg(feature = "wgpu-every-model")]
#[test]
fn t5_encoder_matches_transformers_wgpu() {
    check_t5::<crate::common::Gpu>(&Default::default());
}

/// The fixture configs are the `tiny()` presets and the activations they name.
#[test]
fn fixture_configs_parse() {
    assert_eq!(clip_config("sd21"), ClipTextConfig::tiny());
    assert_eq!(
        clip_config("clip_eos").hidden_act,
        ClipActivation::QuickGelu
    );
    assert_eq!(clip_config("clip_eos").eos_token_id, 50);
    let t5 = T5Config::from_transformers_json(&dir("t5").join("config.json")).unwrap();
    assert_eq!(t5, T5Config::tiny());
}

/// Our bucket function equals transformers' `_relative_position_bucket` for relative
/// positions -300..300, with SD 3's 32 buckets / 128 distance and a small 8 / 20 table.
#[test]
fn t5_relative_position_buckets_match_transformers() {
    let expected = outputs();
    for (key, buckets, distance) in [("t5.buckets.32_128", 32, 128), ("t5.buckets.8_20", 8, 20)] {
        let want = &expected.tensors[key].1;
        for (i, w) in want.iter().enumerate() {
            let rel = i as i64 - 300;
            let got = ctcal::text::t5::relative_position_bucket(rel, true, buckets, distance);
            assert_eq!(got as f32, *w, "{key}: relative position {rel}");
        }
    }
}

/// SD 3's `prompt_embeds` and `pooled_prompt_embeds` as diffusers' `encode_prompt` builds
/// them, with T5 and without it (zeros); SD 2.1's are the text model's last hidden state.
#[test]
fn sd3_and_sd21_conditioning_match_diffusers() {
    type B = crate::common::Cpu;
    let device = Default::default();
    let expected = outputs();
    let clip_l = load_clip_proj::<B>("clip_l", &device)
        .forward(ids("clip_l", &device), true)
        .unwrap();
    let clip_g = load_clip_proj::<B>("clip_g", &device)
        .forward(ids("clip_g", &device), true)
        .unwrap();
    let t5 = load_t5::<B>(&device)
        .forward(ids("t5", &device), None)
        .unwrap();
    let [batch, seq, width] = t5.dims();
    let sd3 = sd3_prompt_embeds(&clip_l, &clip_g, t5).unwrap();
    check(&expected, "sd3.prompt_embeds", sd3.prompt_embeds);
    check(
        &expected,
        "sd3.pooled_prompt_embeds",
        sd3.pooled_prompt_embeds,
    );
    let zeros = t5_zeros::<B>(batch, seq, width, &device);
    let no_t5 = sd3_prompt_embeds(&clip_l, &clip_g, zeros).unwrap();
    check(&expected, "sd3_no_t5.prompt_embeds", no_t5.prompt_embeds);

    let sd21 = load_clip::<B>("sd21", &device);
    let embeds = sd21_prompt_embeds(&sd21, ids("sd21", &device)).unwrap();
    check(&expected, "sd21.last_hidden_state", embeds);

    // Outputs without hidden states cannot be assembled.
    let bare = load_clip_proj::<B>("clip_l", &device)
        .forward(ids("clip_l", &device), false)
        .unwrap();
    let t5 = t5_zeros::<B>(batch, seq, width, &device);
    let err = sd3_prompt_embeds(&bare, &clip_g, t5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("hidden_states"), "{err}");
}

/// A sequence longer than the position table is an input error, not a panic.
#[test]
fn clip_rejects_too_long_input() {
    type B = crate::common::Cpu;
    let device = Default::default();
    let model = ClipTextConfig::tiny().init::<B>(&device);
    let ids = Tensor::<B, 2, Int>::zeros([1, 17], &device);
    let err = model.forward(ids, false).unwrap_err().to_string();
    assert!(err.contains("17 tokens") && err.contains("16"), "{err}");
}

/// Writes `model`'s fixture tensors to `dest/model.safetensors` through `edit` (keys and
/// entries), with the fixture's config.json.
pub(crate) fn rewrite(
    model: &str,
    dest: &Path,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, ctcal::weights::TensorEntry>),
) {
    let mut file = TensorFile::read(&dir(model).join("model.safetensors")).unwrap();
    edit(&mut file.tensors);
    std::fs::create_dir_all(dest).unwrap();
    std::fs::copy(dir(model).join("config.json"), dest.join("config.json")).unwrap();
    ctcal::weights::write_tensor_file(&dest.join("model.safetensors"), &file.tensors, None)
        .unwrap();
}
