//! Corrupt checkpoints and configs give one-line errors naming the file, key, shape or field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::{Cpu, fixture};
use ctcal::unet::UNet2DConditionConfig;
use ctcal::weights::{TensorFile, load_module, write_tensor_file};

/// A fresh copy of the `unet_sd2` fixture's `unet/` folder.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ctcal-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("unet_sd2/unet");
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json"))
        .map_err(|e| e.to_string());
    let msg = match config {
        Err(msg) => msg,
        Ok(config) => match load_module(config.init::<Cpu>(&Default::default()), dir, None) {
            Ok(_) => panic!("loading {} succeeded", dir.display()),
            Err(e) => e.to_string(),
        },
    };
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
    msg
}

/// Rewrites the weights through `edit`.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>)) {
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let mut file = TensorFile::read(&path).unwrap();
    edit(&mut file.tensors);
    write_tensor_file(&path, &file.tensors, None).unwrap();
}

const KEY: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight";

#[test]
fn truncated_file_names_the_file() {
    let dir = scratch("truncated");
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
}

#[test]
fn missing_key_is_named() {
    let dir = scratch("missing");
    edit_weights(&dir, |t| {
        t.remove(KEY);
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("1 missing key(s)") && msg.contains(KEY),
        "{msg}"
    );
}

#[test]
fn unexpected_key_is_named() {
    let dir = scratch("unexpected");
    edit_weights(&dir, |t| {
        t.insert(
            "mid_block.attentions.0.extra.weight".into(),
            (vec![2], vec![0.0, 1.0]),
        );
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("1 unexpected key(s): mid_block.attentions.0.extra.weight"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_names_key_and_shapes() {
    let dir = scratch("shape");
    edit_weights(&dir, |t| {
        let (shape, values) = t.get_mut(KEY).unwrap();
        shape[1] -= 1;
        values.truncate(shape[0] * shape[1]);
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains(&format!("{KEY} has shape [16, 11]")) && msg.contains("expects [16, 12]"),
        "{msg}"
    );
}

#[test]
fn bad_configs_name_the_field_or_file() {
    let dir = scratch("config");
    let path = dir.join("config.json");
    let original = std::fs::read_to_string(&path).unwrap();

    std::fs::write(
        &path,
        original.replace("\"norm_num_groups\": 4", "\"norm_num_groups\": 3"),
    )
    .unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("norm_num_groups = 3"), "{msg}");

    std::fs::write(
        &path,
        original.replace("\"act_fn\": \"silu\"", "\"act_fn\": \"gelu\""),
    )
    .unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("act_fn = \"gelu\" is not supported"), "{msg}");

    std::fs::write(&path, &original[..original.len() / 2]).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("config.json: invalid JSON"), "{msg}");
}

#[test]
fn folder_without_weights_lists_what_was_tried() {
    let dir = scratch("empty");
    std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("no weights found")
            && msg.contains("diffusion_pytorch_model.fp16.safetensors"),
        "{msg}"
    );
}

#[test]
fn shard_missing_from_index_is_named() {
    let dir = std::env::temp_dir().join(format!("ctcal-{}-shards", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("unet_sd2/unet_sharded");
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        std::fs::copy(src.join(&name), dir.join(&name)).unwrap();
        if name.contains("-of-") {
            shards.push(name);
        }
    }
    shards.sort();
    std::fs::remove_file(dir.join(&shards[1])).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains(&shards[1]), "{msg}");
}

/// The same loader gives the same errors for the MMDiT: a missing qk-norm weight and a
/// mis-shaped adaLN projection are named; a dual-attention config without its keys is caught.
#[test]
fn mmdit_keys_are_named() {
    use ctcal::mmdit::{SD3Transformer2DConfig, SD3Transformer2DModel};
    let dir = std::env::temp_dir().join(format!("ctcal-{}-mmdit", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("mmdit_qknorm/transformer");
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let load = |config: SD3Transformer2DConfig| -> String {
        let model: SD3Transformer2DModel<Cpu> = config.init(&Default::default());
        match load_module(model, &dir, None) {
            Ok(_) => panic!("loading succeeded"),
            Err(e) => e.to_string(),
        }
    };
    let config = SD3Transformer2DConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let missing = "transformer_blocks.1.attn.norm_added_k.weight";
    let reshaped = "transformer_blocks.0.norm1.linear.weight";
    edit_weights(&dir, |t| {
        t.remove(missing);
        let (shape, values) = t.get_mut(reshaped).unwrap();
        shape[0] -= 1;
        values.truncate(shape[0] * shape[1]);
    });
    let msg = load(config.clone());
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
    assert!(msg.contains(missing), "{msg}");
    assert!(msg.contains(reshaped), "{msg}");
    let msg = load(config.with_dual_attention_layers(vec![0]));
    assert!(
        msg.contains("transformer_blocks.0.attn2.to_q.weight"),
        "{msg}"
    );
}

/// Saving is the inverse of loading: the UNet and MMDiT fixtures written back give the very
/// tensors diffusers saved (keys, shapes and values), `pos_embed` buffer included.
#[test]
fn save_round_trips_diffusers_files() {
    use ctcal::mmdit::SD3Transformer2DConfig;
    use ctcal::weights::{WEIGHTS_FILE, save_diffusers};
    let device = Default::default();
    let out = std::env::temp_dir().join(format!("ctcal-{}-save", std::process::id()));
    let check = |src: PathBuf, saved: usize| {
        let want = TensorFile::read(&src.join(WEIGHTS_FILE)).unwrap();
        let got = TensorFile::read(&out.join(WEIGHTS_FILE)).unwrap();
        assert_eq!(saved, want.tensors.len());
        assert_eq!(got.tensors, want.tensors, "{}", src.display());
    };
    let src = fixture("unet_sd2/unet");
    let config = UNet2DConditionConfig::from_diffusers_json(&src.join("config.json")).unwrap();
    let (unet, _) = load_module(config.init::<Cpu>(&device), &src, None).unwrap();
    let saved = save_diffusers(&unet, &src.join("config.json"), &out, |_| false).unwrap();
    check(src, saved);
    let src = fixture("mmdit_dual/transformer");
    let config = SD3Transformer2DConfig::from_diffusers_json(&src.join("config.json")).unwrap();
    let (model, _) = load_module(config.init::<Cpu>(&device), &src, None).unwrap();
    let saved = save_diffusers(&model, &src.join("config.json"), &out, |_| false).unwrap();
    check(src, saved);
    let _ = std::fs::remove_dir_all(&out);
}
