//! Training text-encoder LoRA beside the denoiser (`--train-text-encoder`) on the tiny
//! pipelines, through the public `Trainer`:
//! - the text encoders step at their own learning rate: AdamW's first step moves every
//!   element of a zero-initialised `lora_B` by `lr * |g| / (|g| + eps)`, so after one step the
//!   largest `|B|` of each part is its learning rate (1e-4 for the denoiser, 5e-6 for each
//!   CLIP), and every CLIP layer's adapters moved (the gradient reaches them through the
//!   captions encoded in the step);
//! - a run stopped after 2 steps and resumed to 3 ends byte for byte where an uninterrupted
//!   run ends (the text encoders' optimiser state is in the checkpoints);
//! - cached features are refused before anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use ctcal::calibration::CtcalConfig;
use ctcal::data::{BadRowPolicy, CachedFeatures, ImageFolder};
use ctcal::lora::LoraConfig;
use ctcal::mmdit::SD3Transformer2DModel;
use ctcal::pipeline::{
    SD3WithTextEncoders, StableDiffusion, StableDiffusion3, UNetWithTextEncoder,
    with_text_encoder_targets,
};
use ctcal::schedule::{DdpmConfig, FlowConfig, Schedule};
use ctcal::text::{ClipTextModel, ClipTextModelWithProjection};
use ctcal::train::{TrainConfig, Trainer};
use ctcal::unet::UNet2DConditionModel;
use ctcal::weights::TensorFile;

use crate::common::Cpu;

type A = Autodiff<Cpu>;

const LR: f64 = 1e-4;
const TEXT_LR: f64 = 5e-6;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn images() -> Arc<ImageFolder> {
    let meta = root().join("weights/shapes-data/metadata.jsonl");
    Arc::new(ImageFolder::open(&meta, 64, BadRowPolicy::Fail).unwrap())
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ctcal-te-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One step's settings: no clipping and no weight decay, so AdamW's first step is the closed
/// form above.
fn config(ctcal: CtcalConfig, steps: usize) -> TrainConfig {
    TrainConfig::new(ctcal)
        .with_steps(steps)
        .with_batch_size(2)
        .with_lr(LR)
        .with_text_encoder_lr(TEXT_LR)
        .with_weight_decay(0.0)
        .with_max_grad_norm(None)
        .with_checkpoint_every(1)
}

/// The exported `lora_B` tensors (`scale * B`, scale 1 here) by key.
fn lora_b(out: &Path) -> BTreeMap<String, Vec<f32>> {
    let file = TensorFile::read(&out.join("pytorch_lora_weights.safetensors")).unwrap();
    file.tensors
        .into_iter()
        .filter(|(k, _)| k.ends_with("lora_B.weight"))
        .map(|(k, (_, v))| (k, v))
        .collect()
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0f64, |m, x| m.max(x.abs() as f64))
}

/// The largest move of the adapters under `prefix` is `lr` (0.1%), and with `every` each of
/// them moved (not so for a denoiser: the last MMDiT block's text queries feed nothing).
fn assert_stepped_at(b: &BTreeMap<String, Vec<f32>>, prefix: &str, lr: f64, every: bool) {
    let part: Vec<_> = b.iter().filter(|(k, _)| k.starts_with(prefix)).collect();
    assert!(!part.is_empty(), "no adapters under {prefix}");
    let mut largest = 0f64;
    for (key, v) in &part {
        let m = max_abs(v);
        assert!(
            !every || m > 0.5 * lr,
            "{key}: largest |B| {m:e}, learning rate {lr:e}"
        );
        largest = largest.max(m);
    }
    let err = (largest - lr).abs() / lr;
    assert!(
        err < 1e-3,
        "{prefix}: largest |B| {largest:e}, learning rate {lr:e}"
    );
}

fn fit_sd21(out: &Path, steps: usize, resume: bool) -> ctcal::Result<()> {
    let device = Default::default();
    let pipe = StableDiffusion::<Cpu>::load(&root().join("weights/tiny-sd21"), None, &device)?;
    let model = UNetWithTextEncoder::<A> {
        unet: UNet2DConditionModel::from_inner(pipe.unet.clone()),
        text_encoder: ClipTextModel::from_inner(pipe.text_encoder.clone()),
    };
    let schedule = Schedule::Ddpm(DdpmConfig::from_sampler(&pipe.scheduler).init());
    Trainer::new(config(CtcalConfig::sd21(), steps))
        .output_dir(out)
        .resume(resume)
        .map_previews(false)
        .lora(with_text_encoder_targets(LoraConfig::unet_default()))
        .fit(model, &pipe, images(), &schedule, &device)
        .map(drop)
}

#[test]
fn sd21_text_encoder_trains_at_its_own_rate_and_resumes_exactly() {
    let (split, whole) = (temp("split"), temp("whole"));
    fit_sd21(&whole, 1, false).unwrap();
    let b = lora_b(&whole);
    assert_stepped_at(&b, "unet.", LR, false);
    assert_stepped_at(&b, "text_encoder.text_model.encoder.layers.", TEXT_LR, true);

    fit_sd21(&whole, 3, true).unwrap();
    fit_sd21(&split, 2, false).unwrap();
    let checkpoint = split.join("checkpoints/step-0000002");
    assert!(checkpoint.join("optimizer_text.mpk").is_file());
    fit_sd21(&split, 3, true).unwrap();
    let bytes = |dir: &Path| std::fs::read(dir.join("pytorch_lora_weights.safetensors")).unwrap();
    assert!(bytes(&split) == bytes(&whole), "the resumed run differs");
    assert!(lora_b(&split) != b, "steps 2 and 3 changed nothing");
    for dir in [split, whole] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// SD 3: both CLIPs step at the text encoders' rate (CLIP-G's gradient arrives through the
/// hidden states and the pooled projection), the transformer at its own; T5 has no adapters.
#[test]
fn sd3_clips_train_at_their_own_rate() {
    let out = temp("sd3");
    let device = Default::default();
    let pipe =
        StableDiffusion3::<Cpu>::load(&root().join("weights/tiny-sd3"), None, &device).unwrap();
    let clip = |m: &ctcal::text::ClipTextModelWithProjection<Cpu>| {
        ClipTextModelWithProjection::<A>::from_inner(m.clone())
    };
    let model = SD3WithTextEncoders::<A> {
        transformer: SD3Transformer2DModel::from_inner(pipe.transformer.clone()),
        text_encoder: clip(&pipe.text_encoders.text_encoder),
        text_encoder_2: clip(&pipe.text_encoders.text_encoder_2),
    };
    let schedule = Schedule::Flow(FlowConfig::from_sampler(&pipe.scheduler).init());
    Trainer::new(config(CtcalConfig::sd3(), 1))
        .output_dir(&out)
        .map_previews(false)
        .lora(with_text_encoder_targets(LoraConfig::mmdit_default()))
        .fit(model, &pipe, images(), &schedule, &device)
        .unwrap();
    let b = lora_b(&out);
    assert_stepped_at(&b, "transformer.", LR, false);
    assert_stepped_at(&b, "text_encoder.text_model.", TEXT_LR, true);
    assert_stepped_at(&b, "text_encoder_2.text_model.", TEXT_LR, true);
    assert_eq!(
        b.len(),
        b.keys()
            .filter(|k| k.starts_with("transformer.") || k.starts_with("text_encoder"))
            .count()
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// Cached features hold captions encoded beforehand: a run training the text encoders
/// refuses them, naming the file, before it writes anything.
#[test]
fn cached_features_are_refused_before_anything_is_written() {
    let out = temp("cached");
    let device = Default::default();
    let pipe =
        StableDiffusion3::<Cpu>::load(&root().join("weights/tiny-sd3"), None, &device).unwrap();
    let meta = root().join("weights/tiny-data/metadata.jsonl");
    let data = Arc::new(CachedFeatures::open(&meta, BadRowPolicy::Fail).unwrap());
    let model = SD3WithTextEncoders::<A> {
        transformer: SD3Transformer2DModel::from_inner(pipe.transformer.clone()),
        text_encoder: ClipTextModelWithProjection::from_inner(
            pipe.text_encoders.text_encoder.clone(),
        ),
        text_encoder_2: ClipTextModelWithProjection::from_inner(
            pipe.text_encoders.text_encoder_2.clone(),
        ),
    };
    let schedule = Schedule::Flow(FlowConfig::from_sampler(&pipe.scheduler).init());
    let err = Trainer::new(config(CtcalConfig::sd3(), 1))
        .output_dir(&out)
        .lora(with_text_encoder_targets(LoraConfig::mmdit_default()))
        .fit(model, &pipe, data, &schedule, &device)
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("metadata.jsonl") && err.contains("training the text encoders"),
        "{err}"
    );
    assert!(!out.exists(), "the refused run wrote {}", out.display());
}
