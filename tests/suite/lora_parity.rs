//! LoRA against diffusers: the fixture files of `scripts/fixtures_lora.py` hold PEFT-layout
//! adapters that diffusers loaded the way `pipe.load_lora_weights()` does; imported here they
//! reproduce diffusers' output (1e-4 relative, f32), merging keeps it (1e-5), and our export of
//! the imported model writes the same tensors under the same keys, so the exported layout is
//! the one diffusers accepted.

use std::path::PathBuf;

use crate::common::{Cpu, fixture, rel_err, values};
use burn::backend::Autodiff;
use burn::tensor::Tensor;
use ctcal::attention::AttentionBackend;
use ctcal::lora::{LoraConfig, LoraTarget, apply_lora, export_peft, import_peft, merge_lora};
use ctcal::mmdit::{SD3Transformer2DConfig, SD3Transformer2DModel};
use ctcal::pipeline::{
    SD3WithTextEncoders, StableDiffusion, StableDiffusion3, UNetWithTextEncoder,
};
use ctcal::text::Sd3TextEncoders;
use ctcal::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use ctcal::weights::{TensorFile, load_module};

const TOL: f32 = 1e-4;

fn lora_file(case: &str) -> PathBuf {
    fixture("lora").join(format!("{case}_lora.safetensors"))
}

fn expected(case: &str) -> Vec<f32> {
    let file = fixture("lora").join(format!("{case}_outputs.safetensors"));
    TensorFile::read(&file).unwrap().tensors["out"].1.clone()
}

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ctcal-lora-{}-{name}", std::process::id()))
}

fn unet<B: AttentionBackend>(device: &B::Device) -> UNet2DConditionModel<B> {
    let dir = fixture("unet_sd2").join("unet");
    let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    load_module(config.init::<B>(device), &dir, None).unwrap().0
}

fn run_unet<B: AttentionBackend>(model: &UNet2DConditionModel<B>, device: &B::Device) -> Vec<f32> {
    let f = TensorFile::read(&fixture("unet_sd2").join("inputs.safetensors")).unwrap();
    let sample: Tensor<B, 4> = f.tensor("sample", device).unwrap();
    let t: Tensor<B, 1> = f.tensor("timestep", device).unwrap();
    let ctx: Tensor<B, 3> = f.tensor("encoder_hidden_states", device).unwrap();
    values(model.forward(sample, t, ctx))
}

fn mmdit<B: AttentionBackend>(device: &B::Device) -> SD3Transformer2DModel<B> {
    let dir = fixture("mmdit_sd3").join("transformer");
    let config = SD3Transformer2DConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    load_module(config.init::<B>(device), &dir, None).unwrap().0
}

fn run_mmdit<B: AttentionBackend>(
    model: &SD3Transformer2DModel<B>,
    device: &B::Device,
) -> Vec<f32> {
    let f = TensorFile::read(&fixture("mmdit_sd3").join("inputs.safetensors")).unwrap();
    let x: Tensor<B, 4> = f.tensor("hidden_states", device).unwrap();
    let t: Tensor<B, 1> = f.tensor("timestep", device).unwrap();
    let ctx: Tensor<B, 3> = f.tensor("encoder_hidden_states", device).unwrap();
    let pooled: Tensor<B, 2> = f.tensor("pooled_projections", device).unwrap();
    values(model.forward(x, t, ctx, pooled))
}

/// Imports the fixture's adapters into `model`, checks the output, the merged output and the
/// re-export.
fn check<M: LoraTarget<Cpu> + Clone>(
    case: &str,
    model: M,
    adapters: usize,
    run: impl Fn(&M) -> Vec<f32>,
) {
    let base = run(&model);
    let (model, report) = import_peft(model, &lora_file(case), M::PEFT_PREFIX).unwrap();
    assert_eq!(report.adapters(), adapters, "{case}: {report:?}");
    assert_eq!(report.ignored, 0);
    let want = expected(case);
    assert!(rel_err(&base, &want) > 1e-3, "{case}: the LoRA must matter");
    let out = run(&model);
    let err = rel_err(&out, &want);
    assert!(err < TOL, "{case}: LoRA output relative error {err}");

    let merged = merge_lora(model.clone());
    merged.visit_lora(&mut |path, layer| assert!(!layer.has_adapter(), "{path}"));
    let err = rel_err(&run(&merged), &out);
    assert!(err < 1e-5, "{case}: merged output relative error {err}");

    assert_exports_the_fixture(case, &model);
}

/// Our export of `model` writes the fixture file's tensors under its keys.
fn assert_exports_the_fixture<M: LoraTarget<Cpu>>(case: &str, model: &M) {
    let path = temp_file(&format!("{case}.safetensors"));
    export_peft(model, &path, M::PEFT_PREFIX).unwrap();
    let ours = TensorFile::read(&path).unwrap();
    let theirs = TensorFile::read(&lora_file(case)).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        ours.tensors.keys().collect::<Vec<_>>(),
        theirs.tensors.keys().collect::<Vec<_>>(),
        "{case}: exported keys"
    );
    for (key, (shape, v)) in &ours.tensors {
        let (want_shape, want) = &theirs.tensors[key];
        assert_eq!(shape, want_shape, "{key}");
        let diff = v
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-7, "{key}: max abs difference {diff}");
    }
    assert_eq!(
        ours.metadata["ctcal.lora.rank"],
        theirs.metadata["ctcal.lora.rank"]
    );
}

#[test]
fn unet_lora_matches_diffusers_and_exports_its_layout() {
    let device = Default::default();
    let model = unet::<Cpu>(&device);
    let adapters = 4 * model.sites().len();
    check("unet_sd2", model, adapters, |m| run_unet(m, &device));
}

#[test]
fn mmdit_lora_matches_diffusers_and_exports_its_layout() {
    let device = Default::default();
    let model = mmdit::<Cpu>(&device);
    let adapters = 8 * model.transformer_blocks.len() - 1;
    check("mmdit_sd3", model, adapters, |m| run_mmdit(m, &device));
}

/// Adapters attached before the base checkpoint is loaded: the loader leaves them (and every
/// `require_grad` flag) alone, and importing the fixture then gives diffusers' output.
#[test]
fn base_checkpoint_loads_into_a_model_with_adapters() {
    type A = Autodiff<Cpu>;
    let device = Default::default();
    let dir = fixture("unet_sd2").join("unet");
    let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let lora = LoraConfig::unet_default().with_rank(2);
    let (model, _) = apply_lora(config.init::<A>(&device), &lora, 0).unwrap();
    let (model, report) = load_module(model, &dir, None).unwrap();
    assert!(report.tensors > 100);
    let to_q = &model.down_blocks[0].attentions[0].transformer_blocks[0]
        .attn1
        .to_q;
    assert!(!to_q.base.weight.val().is_require_grad());
    assert!(to_q.lora_a.as_ref().unwrap().weight.val().is_require_grad());
    let (model, _) = import_peft(model, &lora_file("unet_sd2"), "unet.").unwrap();
    let err = rel_err(&run_unet(&model, &device), &expected("unet_sd2"));
    assert!(err < TOL, "relative error {err}");
}

/// A LoRA file is not a base checkpoint: loading one as the base names the adapter keys.
#[test]
fn lora_file_is_rejected_as_base_weights() {
    let device = Default::default();
    let dir = fixture("unet_sd2").join("unet");
    let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let files = ctcal::weights::CheckpointFiles::single(lora_file("unet_sd2"));
    let err = ctcal::weights::load_files(config.init::<Cpu>(&device), &files)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected key(s): unet.") && err.contains("lora_A.weight"),
        "{err}"
    );
}

/// The prompts of the text-encoder cases (`PROMPTS` in `scripts/fixtures_lora.py`).
const PROMPTS: [&str; 2] = [
    "a red circle to the left of a blue square",
    "two yellow triangles",
];

fn text_case(case: &str) -> TensorFile {
    TensorFile::read(&fixture("lora").join(format!("{case}_outputs.safetensors"))).unwrap()
}

fn pipeline_dir(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights")
        .join(name)
}

/// Keys of a PEFT file under `prefix`, halved: the adapters it holds there.
fn adapters_under(case: &str, prefix: &str) -> usize {
    let file = TensorFile::read(&lora_file(case)).unwrap();
    file.tensors
        .keys()
        .filter(|k| k.starts_with(prefix))
        .count()
        / 2
}

/// Text-encoder LoRA (`--train-text-encoder`): the fixture file, which diffusers'
/// `pipe.load_lora_weights()` loaded whole into the tiny SD 2.1 pipeline, imports into
/// [`UNetWithTextEncoder`] (UNet and CLIP adapters by their component prefixes); the prompt
/// embeddings and the UNet's output on them match diffusers', and our export writes the file.
#[test]
fn sd21_text_encoder_lora_matches_diffusers_and_exports_its_layout() {
    let device = Default::default();
    let pipe = StableDiffusion::<Cpu>::load(&pipeline_dir("tiny-sd21"), None, &device).unwrap();
    let model = UNetWithTextEncoder {
        unet: pipe.unet.clone(),
        text_encoder: pipe.text_encoder.clone(),
    };
    let case = "sd21_text";
    let want = text_case(case);
    let embeds = |m: &UNetWithTextEncoder<Cpu>| {
        let (cond, _) = pipe
            .encode_prompts_with(&m.text_encoder, &PROMPTS, &device)
            .unwrap();
        cond.hidden
    };
    let want_embeds = &want.tensors["prompt_embeds"].1;
    assert!(rel_err(&values(embeds(&model)), want_embeds) > 1e-3);

    let (model, report) = import_peft(model, &lora_file(case), "").unwrap();
    assert_eq!(report.ignored, 0);
    let unet_adapters = 4 * model.unet.sites().len();
    assert_eq!(adapters_under(case, "unet."), unet_adapters);
    let clip_adapters = adapters_under(case, "text_encoder.");
    assert_eq!(
        clip_adapters,
        4 * model.text_encoder.text_model.encoder.layers.len()
    );
    assert_eq!(report.adapters(), unet_adapters + clip_adapters);

    let hidden = embeds(&model);
    let err = rel_err(&values(hidden.clone()), want_embeds);
    assert!(err < TOL, "prompt embeddings: relative error {err}");
    let sample: Tensor<Cpu, 4> = want.tensor("sample", &device).unwrap();
    let t: Tensor<Cpu, 1> = want.tensor("timestep", &device).unwrap();
    let out = values(model.unet.forward(sample, t, hidden));
    let err = rel_err(&out, &want.tensors["out"].1);
    assert!(err < TOL, "UNet output: relative error {err}");
    assert_exports_the_fixture(case, &model);
}

/// As for SD 2.1, on the tiny SD 3 pipeline: the transformer's and both CLIPs' adapters
/// (`transformer.`, `text_encoder.`, `text_encoder_2.`) from one file; T5 stays as it is.
#[test]
fn sd3_text_encoder_lora_matches_diffusers_and_exports_its_layout() {
    let device = Default::default();
    let pipe = StableDiffusion3::<Cpu>::load(&pipeline_dir("tiny-sd3"), None, &device).unwrap();
    let model = SD3WithTextEncoders {
        transformer: pipe.transformer.clone(),
        text_encoder: pipe.text_encoders.text_encoder.clone(),
        text_encoder_2: pipe.text_encoders.text_encoder_2.clone(),
    };
    let case = "sd3_text";
    let want = text_case(case);
    let encode = |m: &SD3WithTextEncoders<Cpu>| {
        let encoders = Sd3TextEncoders {
            text_encoder: m.text_encoder.clone(),
            text_encoder_2: m.text_encoder_2.clone(),
            text_encoder_3: pipe.text_encoders.text_encoder_3.clone(),
        };
        pipe.encode_prompts_with(&encoders, &PROMPTS, 32).unwrap().0
    };
    let want_embeds = &want.tensors["prompt_embeds"].1;
    assert!(rel_err(&values(encode(&model).hidden), want_embeds) > 1e-3);

    let (model, report) = import_peft(model, &lora_file(case), "").unwrap();
    assert_eq!(report.ignored, 0);
    for (prefix, layers) in [
        (
            "text_encoder.",
            model.text_encoder.text_model.encoder.layers.len(),
        ),
        (
            "text_encoder_2.",
            model.text_encoder_2.text_model.encoder.layers.len(),
        ),
    ] {
        assert_eq!(adapters_under(case, prefix), 4 * layers, "{prefix}");
    }
    let total = ["transformer.", "text_encoder.", "text_encoder_2."]
        .map(|p| adapters_under(case, p))
        .iter()
        .sum::<usize>();
    assert_eq!(report.adapters(), total);

    let cond = encode(&model);
    let err = rel_err(&values(cond.hidden.clone()), want_embeds);
    assert!(err < TOL, "prompt embeddings: relative error {err}");
    let pooled = cond.pooled.unwrap();
    let err = rel_err(
        &values(pooled.clone()),
        &want.tensors["pooled_prompt_embeds"].1,
    );
    assert!(err < TOL, "pooled embeddings: relative error {err}");
    let sample: Tensor<Cpu, 4> = want.tensor("sample", &device).unwrap();
    let t: Tensor<Cpu, 1> = want.tensor("timestep", &device).unwrap();
    let out = values(model.transformer.forward(sample, t, cond.hidden, pooled));
    let err = rel_err(&out, &want.tensors["out"].1);
    assert!(err < TOL, "transformer output: relative error {err}");
    assert_exports_the_fixture(case, &model);
}
