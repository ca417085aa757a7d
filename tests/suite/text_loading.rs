//! Text-encoder checkpoints in the layouts transformers versions write, bad configs and
//! checkpoints (errors naming the key), and LoRA on CLIP's self-attention.

use std::path::PathBuf;

use burn::tensor::{Int, Tensor};
use ctcal::lora::{LoraConfig, apply_lora, export_peft};
use ctcal::text::{ClipTextConfig, T5Config, load_transformers};
use ctcal::weights::TensorFile;

use crate::common::{Cpu, fixture, rel_err, values};
use crate::text_parity::{load_clip, load_t5, rewrite};

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ctcal-text-{}-{name}", std::process::id()))
}

fn sd21_ids() -> Tensor<Cpu, 2, Int> {
    let f = TensorFile::read(&fixture("text/inputs.safetensors")).unwrap();
    f.tensor::<Cpu, 2>("sd21", &Default::default())
        .unwrap()
        .int()
}

/// SD 2.1's published layout (transformers 4.25): keys under `text_model.` plus the int64
/// `text_model.embeddings.position_ids` buffer. transformers 5's fixture has neither.
#[test]
fn clip_loads_published_layout_with_position_ids() {
    let dest = scratch("clip-published");
    rewrite("sd21", &dest, |t| {
        *t = std::mem::take(t)
            .into_iter()
            .map(|(k, v)| (format!("text_model.{k}"), v))
            .collect();
    });
    // Add the int64 buffer with the safetensors crate (the crate's writer is f32 only).
    let path = dest.join("model.safetensors");
    let file = TensorFile::read(&path).unwrap();
    let mut owned: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = file
        .tensors
        .iter()
        .map(|(k, (s, v))| {
            let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), b, s.clone(), safetensors::Dtype::F32)
        })
        .collect();
    let ids: Vec<u8> = (0..16i64).flat_map(|x| x.to_le_bytes()).collect();
    owned.push((
        "text_model.embeddings.position_ids".into(),
        ids,
        vec![1, 16],
        safetensors::Dtype::I64,
    ));
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(k, b, s, d)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (k.clone(), view)
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();

    let device = Default::default();
    let (model, report) =
        load_transformers(ClipTextConfig::tiny().init::<Cpu>(&device), &dest, None).unwrap();
    assert_eq!(report.tensors, file.tensors.len());
    let reference = load_clip::<Cpu>("sd21", &device);
    let a = model.forward(sd21_ids(), false).unwrap().last_hidden_state;
    let b = reference
        .forward(sd21_ids(), false)
        .unwrap()
        .last_hidden_state;
    assert_eq!(values(a), values(b));
    std::fs::remove_dir_all(&dest).ok();
}

/// A T5 file holding only `encoder.embed_tokens.weight`, or both tied keys, loads the same.
#[test]
fn t5_loads_either_tied_embedding_key() {
    let device = Default::default();
    let ids: Tensor<Cpu, 2, Int> = TensorFile::read(&fixture("text/inputs.safetensors"))
        .unwrap()
        .tensor::<Cpu, 2>("t5", &device)
        .unwrap()
        .int();
    let want = values(load_t5::<Cpu>(&device).forward(ids.clone(), None).unwrap());
    for (case, keep_shared) in [("only-embed-tokens", false), ("both", true)] {
        let dest = scratch(case);
        rewrite("t5", &dest, |t| {
            let shared = if keep_shared {
                t["shared.weight"].clone()
            } else {
                t.remove("shared.weight").unwrap()
            };
            t.insert("encoder.embed_tokens.weight".into(), shared);
        });
        let config = T5Config::tiny().init::<Cpu>(&device).unwrap();
        let (model, _) = load_transformers(config, &dest, None).unwrap();
        let got = values(model.forward(ids.clone(), None).unwrap());
        assert_eq!(rel_err(&got, &want), 0.0, "{case}");
        std::fs::remove_dir_all(&dest).ok();
    }
}

/// A mis-shaped tensor is an error naming its key; so is a missing one.
#[test]
fn bad_checkpoints_name_the_key() {
    let device = Default::default();
    let dest = scratch("misshaped");
    rewrite("clip_l", &dest, |t| {
        t.insert(
            "text_model.encoder.layers.1.mlp.fc1.weight".into(),
            (vec![40, 23], vec![0.0; 40 * 23]),
        );
        t.remove("text_projection.weight");
    });
    let config = ClipTextConfig::from_transformers_json(&dest.join("config.json")).unwrap();
    let err = load_transformers(config.init_with_projection::<Cpu>(&device), &dest, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("text_model.encoder.layers.1.mlp.fc1.weight has shape [40, 23]")
            && err.contains("[40, 24]"),
        "{err}"
    );
    assert!(
        err.contains("missing key(s): text_projection.weight"),
        "{err}"
    );
    std::fs::remove_dir_all(&dest).ok();
}

/// A field of the wrong type names the field; an unsupported value is refused; unknown
/// generic fields are ignored.
#[test]
fn bad_configs_name_the_field() {
    let dest = scratch("configs");
    std::fs::create_dir_all(&dest).unwrap();
    let path = dest.join("config.json");
    let clip = |text: &str| {
        std::fs::write(&path, text).unwrap();
        ClipTextConfig::from_transformers_json(&path)
    };
    let err = clip(r#"{"hidden_size": "1024"}"#).unwrap_err().to_string();
    assert!(
        err.contains("`hidden_size`") && err.contains("config.json"),
        "{err}"
    );
    let err = clip(r#"{"eos_token_id": [2, 3]}"#).unwrap_err().to_string();
    assert!(err.contains("`eos_token_id`"), "{err}");
    let err = clip(r#"{"hidden_act": "relu"}"#).unwrap_err().to_string();
    assert!(err.contains("`hidden_act`"), "{err}");
    let err = clip(r#"{"hidden_size": 30, "num_attention_heads": 4}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a multiple"), "{err}");
    let ok = clip(r#"{"architectures": ["CLIPTextModel"], "torch_dtype": "float16"}"#).unwrap();
    assert_eq!(ok, ClipTextConfig::new());

    let t5 = |text: &str| {
        std::fs::write(&path, text).unwrap();
        T5Config::from_transformers_json(&path)
    };
    let err = t5(r#"{"num_heads": 4.5}"#).unwrap_err().to_string();
    assert!(err.contains("`num_heads`"), "{err}");
    let err = t5(r#"{"feed_forward_proj": "gated-swish"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gated-swish"), "{err}");
    let err = t5(r#"{"is_decoder": true}"#).unwrap_err().to_string();
    assert!(err.contains("is_decoder"), "{err}");
    std::fs::remove_dir_all(&dest).ok();
}

/// `LoraConfig::clip_default()` adapts the four self-attention projections of every layer,
/// leaves the output unchanged (B = 0) and exports diffusers' text-encoder key names.
#[test]
fn lora_targets_clip_self_attention() {
    let device = Default::default();
    let model = load_clip::<Cpu>("sd21", &device);
    let before = values(model.forward(sd21_ids(), false).unwrap().last_hidden_state);
    let (model, report) = apply_lora(model, &LoraConfig::clip_default(), 3).unwrap();
    assert_eq!(report.adapters(), 2 * 4);
    assert_eq!(
        report.paths[..4],
        [
            "text_model.encoder.layers.0.self_attn.q_proj",
            "text_model.encoder.layers.0.self_attn.k_proj",
            "text_model.encoder.layers.0.self_attn.v_proj",
            "text_model.encoder.layers.0.self_attn.out_proj",
        ]
    );
    // rank 4 * (32 + 32) per projection.
    assert_eq!(report.trainable_params, 8 * 4 * 64);
    let after = values(model.forward(sd21_ids(), false).unwrap().last_hidden_state);
    assert_eq!(before, after);

    let path = scratch("lora.safetensors");
    export_peft(&model, &path, "text_encoder.").unwrap();
    let file = TensorFile::read(&path).unwrap();
    let (shape, _) =
        &file.tensors["text_encoder.text_model.encoder.layers.1.self_attn.out_proj.lora_A.weight"];
    assert_eq!(shape, &vec![4, 32]);
    assert_eq!(file.tensors.len(), 16);
    std::fs::remove_file(&path).ok();
}
