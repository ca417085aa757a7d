//! LoRA on the CPU test backend: merging, fresh adapters, pattern matching, key names,
//! frozen base weights under autodiff and AdamW, and file errors that name the key.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::nn::LinearConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor, backend::Backend};

use super::*;
use crate::mmdit::{SD3Transformer2DConfig, SD3Transformer2DModel};
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::weights::{expected_keys, expected_tensors, write_tensor_file};

type B = crate::TestBackend;
type A = Autodiff<B>;

fn normal<Bk: Backend, const D: usize>(shape: [usize; D]) -> Tensor<Bk, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn max_abs_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f64 {
    (a - b).abs().max().into_scalar_f64()
}

trait ScalarF64 {
    fn into_scalar_f64(self) -> f64;
}

impl<Bk: Backend> ScalarF64 for Tensor<Bk, 1> {
    fn into_scalar_f64(self) -> f64 {
        self.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
    }
}

fn unet<Bk: crate::attention::AttentionBackend>() -> UNet2DConditionModel<Bk> {
    UNet2DConditionConfig::tiny().init(&Default::default())
}

fn mmdit<Bk: crate::attention::AttentionBackend>() -> SD3Transformer2DModel<Bk> {
    SD3Transformer2DConfig::tiny().init(&Default::default())
}

fn run_unet<Bk: crate::attention::AttentionBackend>(
    model: &UNet2DConditionModel<Bk>,
    seed: u64,
) -> Tensor<Bk, 4> {
    Bk::seed(&Default::default(), seed);
    let t = Tensor::from_floats([500.0], &Default::default());
    model.forward(normal([1, 4, 8, 8]), t, normal([1, 5, 32]))
}

fn run_mmdit<Bk: crate::attention::AttentionBackend>(
    model: &SD3Transformer2DModel<Bk>,
    seed: u64,
) -> Tensor<Bk, 4> {
    Bk::seed(&Default::default(), seed);
    let t = Tensor::from_floats([500.0], &Default::default());
    model.forward(normal([1, 4, 8, 6]), t, normal([1, 5, 32]), normal([1, 32]))
}

/// Replaces every adapter's `B` (zero when fresh) by noise, so adapters matter.
fn randomize_b<Bk: Backend, M: LoraTarget<Bk>>(model: M) -> M {
    model.map_lora(&mut |_, layer| {
        let (Some(a), Some(b)) = (&layer.lora_a, &layer.lora_b) else {
            return layer;
        };
        let (a, shape) = (a.weight.val(), b.weight.lazy_shape());
        let b = normal::<Bk, 2>([shape[0], shape[1]]).mul_scalar(0.1);
        layer.set_adapter_weights(a, b)
    })
}

fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ctcal-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn layer_merge_equals_unmerged_forward() {
    let device = Default::default();
    let base = LinearConfig::new(6, 5).init::<B>(&device);
    let layer = LoraLinear::new(base)
        .with_adapter(normal([6, 3]), normal([3, 5]), 0.75)
        .unwrap();
    assert_eq!(layer.rank(), Some(3));
    assert_eq!(layer.adapter_params(), 3 * (6 + 5));
    let x = normal::<B, 3>([2, 4, 6]);
    let unmerged = layer.forward(x.clone());
    // By hand: base + 0.75 * x A B.
    let a = layer.lora_a.as_ref().unwrap().weight.val();
    let b = layer.lora_b.as_ref().unwrap().weight.val();
    let by_hand = layer.base.forward(x.clone())
        + x.clone()
            .matmul(a.unsqueeze())
            .matmul(b.unsqueeze())
            .mul_scalar(0.75);
    assert!(max_abs_diff(unmerged.clone(), by_hand) < 1e-12);
    let merged = layer.merge();
    assert!(max_abs_diff(unmerged, merged.forward(x)) < 1e-10);

    let bad = LoraLinear::new(LinearConfig::new(6, 5).init::<B>(&device))
        .with_adapter(normal([5, 3]), normal([3, 5]), 1.0)
        .unwrap_err();
    assert!(bad.to_string().contains("6 -> 5"), "{bad}");
}

#[test]
fn fresh_adapters_change_nothing_and_merge_equals_forward() {
    let plain = unet::<B>();
    let before = run_unet(&plain, 1);
    let (adapted, report) = apply_lora(plain, &LoraConfig::unet_default(), 7).unwrap();
    assert_eq!(max_abs_diff(before.clone(), run_unet(&adapted, 1)), 0.0);

    let adapted = randomize_b(adapted);
    let with_lora = run_unet(&adapted, 1);
    let change =
        max_abs_diff(with_lora.clone(), before) / with_lora.clone().abs().max().into_scalar_f64();
    assert!(
        change > 1e-4,
        "adapters with B != 0 change the output ({change})"
    );
    let merged = merge_lora(adapted);
    merged.visit_lora(&mut |path, layer| assert!(!layer.has_adapter(), "{path}"));
    assert!(max_abs_diff(with_lora, run_unet(&merged, 1)) < 1e-10);
    assert_eq!(report.adapters(), 4 * merged.sites().len());

    let (adapted, _) = apply_lora(mmdit::<B>(), &LoraConfig::mmdit_default(), 3).unwrap();
    let adapted = randomize_b(adapted);
    let with_lora = run_mmdit(&adapted, 2);
    assert!(max_abs_diff(with_lora, run_mmdit(&merge_lora(adapted), 2)) < 1e-10);
}

#[test]
fn patterns_match_path_suffixes_by_segment() {
    let q1 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    let k2 = "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k";
    let out = "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0";
    let add = "transformer_blocks.3.attn.add_q_proj";
    let table: [(&str, [bool; 4]); 10] = [
        ("to_q", [true, false, false, false]),
        ("attn2.to_k", [false, true, false, false]),
        ("attn1.to_k", [false, false, false, false]),
        ("to_out.0", [false, false, true, false]),
        ("to_out", [false, false, false, false]),
        ("0", [false, false, true, false]),
        ("add_q_proj", [false, false, false, true]),
        ("q_proj", [false, false, false, false]),
        (
            "up_blocks.*.attentions.*.transformer_blocks.*.attn2.to_k",
            [false, true, false, false],
        ),
        ("*.to_out.0", [false, false, true, false]),
    ];
    for (pattern, want) in table {
        let got = [q1, k2, out, add].map(|p| pattern_matches(pattern, p));
        assert_eq!(got, want, "{pattern}");
    }
    assert!(pattern_matches(q1, q1), "a full path matches itself");
    assert!(!pattern_matches(&format!("x.{q1}"), q1));
}

#[test]
fn apply_lora_targets_counts_and_errors() {
    let model = unet::<B>();
    let cross = model
        .sites()
        .iter()
        .filter(|s| s.kind == crate::attention::AttentionKind::Cross)
        .count();
    let config = LoraConfig::new(vec!["attn2.to_k".into()]).with_rank(3);
    let (model, report) = apply_lora(model, &config, 0).unwrap();
    assert_eq!(report.adapters(), cross);
    assert!(report.paths.iter().all(|p| p.ends_with("attn2.to_k")));
    let mut expected_params = 0;
    model.visit_lora(&mut |_, l| expected_params += l.adapter_params());
    assert_eq!(report.trainable_params, expected_params);
    // attn2.to_k: the 32-wide text in, 32 channels out (down 0, two in up 1) or 64 (mid).
    assert_eq!(expected_params, 3 * (3 * (32 + 32) + (32 + 64)));
    let err = apply_lora(model, &config, 0).unwrap_err().to_string();
    assert!(err.contains("already has a LoRA adapter"), "{err}");
    // A rank above the narrowest targeted projection (32 -> 32) is refused before any
    // adapter is made; 32 itself is allowed.
    let wide = LoraConfig::new(vec!["attn2.to_k".into()]).with_rank(100_000);
    let err = apply_lora(unet::<B>(), &wide, 0).unwrap_err().to_string();
    assert!(
        err.contains("rank 100000")
            && err.contains("attn2.to_k (32 -> 32)")
            && err.contains("at most 32"),
        "{err}"
    );
    assert!(apply_lora(unet::<B>(), &wide.with_rank(32), 0).is_ok());

    // MMDiT default: ten projections per block, eight in the last (no to_add_out), plus none
    // outside the attention.
    let model = mmdit::<B>();
    let blocks = model.transformer_blocks.len();
    let (model, report) = apply_lora(model, &LoraConfig::mmdit_default(), 0).unwrap();
    assert_eq!(report.adapters(), 8 * blocks - 1);
    assert_eq!(report.trainable_params, (8 * blocks - 1) * 4 * (32 + 32));
    assert_eq!(report.frozen_params, mmdit::<B>().num_params());
    assert_eq!(LoraConfig::mmdit_default().scale(), 1.0);
    drop(model);

    let cases: [(LoraConfig, &str); 6] = [
        (LoraConfig::unet_default().with_rank(0), "rank"),
        (LoraConfig::unet_default().with_alpha(Some(-1.0)), "alpha"),
        (LoraConfig::unet_default().with_dropout(1.0), "dropout"),
        (LoraConfig::new(vec!["to_out".into()]), "\"to_out\""),
        (
            LoraConfig::new(vec!["ff.net.0.proj".into()]),
            "\"ff.net.0.proj\"",
        ),
        (LoraConfig::mmdit_default(), "\"add_q_proj\""),
    ];
    for (config, needle) in cases {
        let err = apply_lora(unet::<B>(), &config, 0).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn adapter_keys_are_peft_names_in_pytorch_layout() {
    let model = mmdit::<B>();
    let plain_keys = expected_keys(&model);
    let mut paths = Vec::new();
    model.visit_lora(&mut |p, _| paths.push(p.to_string()));
    for p in &paths {
        let key = format!("{p}.weight");
        assert!(plain_keys.iter().any(|(k, _)| *k == key), "{key}");
    }
    let (model, _) = apply_lora(model, &LoraConfig::mmdit_default().with_rank(5), 0).unwrap();
    let keys: HashMap<String, Vec<usize>> = expected_keys(&model).into_iter().collect();
    let a = &keys["transformer_blocks.0.attn.add_k_proj.lora_A.weight"];
    let b = &keys["transformer_blocks.0.attn.add_k_proj.lora_B.weight"];
    assert_eq!((a.as_slice(), b.as_slice()), (&[5, 32][..], &[32, 5][..]));
    assert_eq!(keys.len(), plain_keys.len() + 2 * paths.len());
}

/// Collects every float parameter's path, `require_grad` flag and values.
#[derive(Default)]
struct Params {
    path: Vec<String>,
    out: BTreeMap<String, (bool, Vec<f64>)>,
}

impl<Bk: Backend> ModuleVisitor<Bk> for Params {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        let values = param.val().into_data().convert::<f64>().to_vec().unwrap();
        self.out
            .insert(self.path.join("."), (param.val().is_require_grad(), values));
    }
}

fn params<Bk: Backend, M: Module<Bk>>(model: &M) -> BTreeMap<String, (bool, Vec<f64>)> {
    let mut visitor = Params::default();
    model.visit(&mut visitor);
    visitor.out
}

/// Which parameters got a gradient.
struct HasGrad<'a> {
    grads: &'a <A as burn::tensor::backend::AutodiffBackend>::Gradients,
    path: Vec<String>,
    with: Vec<String>,
}

impl ModuleVisitor<A> for HasGrad<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        if param.val().grad(self.grads).is_some() {
            self.with.push(self.path.join("."));
        }
    }
}

#[test]
fn only_adapters_get_gradients_and_adamw_moves_only_them() {
    let (model, report) = apply_lora(unet::<A>(), &LoraConfig::unet_default(), 5).unwrap();
    let model = randomize_b(model);
    let before = params(&model);
    let lora: Vec<&String> = before
        .keys()
        .filter(|p| crate::weights::is_adapter_path(p))
        .collect();
    assert_eq!(lora.len(), 2 * report.adapters());
    for (path, (require_grad, _)) in &before {
        assert_eq!(*require_grad, lora.contains(&path), "{path}");
    }

    let loss = run_unet(&model, 3).powi_scalar(2).mean();
    let grads = loss.backward();
    let mut visitor = HasGrad {
        grads: &grads,
        path: Vec::new(),
        with: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.with.sort();
    assert_eq!(visitor.with.iter().collect::<Vec<_>>(), lora);
    let grads = GradientsParams::from_grads(grads, &model);
    assert_eq!(grads.len(), lora.len());

    let mut optim = AdamWConfig::new().init::<A, UNet2DConditionModel<A>>();
    let model = optim.step(1e-2, model, grads);
    let after = params(&model);
    for (path, (require_grad, values)) in &after {
        let (was_required, old) = &before[path];
        assert_eq!(require_grad, was_required, "{path}");
        if lora.contains(&path) {
            assert_ne!(values, old, "{path} should have moved");
        } else {
            assert_eq!(values, old, "{path} is frozen");
        }
    }
    // The inference copy keeps the adapters.
    assert!(
        model.valid().down_blocks[0].attentions[0].transformer_blocks[0]
            .attn1
            .to_q
            .has_adapter()
    );
}

#[test]
fn export_import_round_trip_keeps_scale_and_output() {
    let path = temp_file("round_trip.safetensors");
    let config = LoraConfig::mmdit_default().with_alpha(Some(8.0));
    let (model, _) = apply_lora(mmdit::<B>(), &config, 1).unwrap();
    let model = randomize_b(model);
    let out = run_mmdit(&model, 4);
    let report = export_peft(&model, &path, "transformer.").unwrap();
    assert_eq!(report.adapters(), 8 * model.transformer_blocks.len() - 1);

    let file = crate::weights::TensorFile::read(&path).unwrap();
    assert_eq!(file.metadata["ctcal.lora.rank"], "4");
    assert_eq!(file.metadata["ctcal.lora.alpha"], "8");
    let key = "transformer.transformer_blocks.1.attn.to_add_out";
    assert_eq!(file.tensors[&format!("{key}.lora_A.weight")].0, [4, 32]);
    let (shape, b_file) = &file.tensors[&format!("{key}.lora_B.weight")];
    assert_eq!(shape, &[32, 4]);
    let layer = &model.transformer_blocks[1]
        .attn
        .to_add_out
        .as_ref()
        .unwrap();
    let b_ours: Vec<f64> = layer
        .lora_b
        .as_ref()
        .unwrap()
        .weight
        .val()
        .transpose()
        .into_data()
        .to_vec()
        .unwrap();
    for (f, o) in b_file.iter().zip(&b_ours) {
        assert!(
            (*f as f64 - 2.0 * o).abs() < 1e-6,
            "scale 8 / 4 baked into lora_B"
        );
    }

    // Into a plain model: scale 1 adapters, same function.
    let (plain, report) = import_peft(strip(&model), &path, "transformer.").unwrap();
    assert_eq!(report.adapters(), 8 * plain.transformer_blocks.len() - 1);
    let err = max_abs_diff(out.clone(), run_mmdit(&plain, 4));
    assert!(err < 1e-5, "{err}");
    // Into a model with the same config: its scale stays, B comes back.
    let (same, _) = apply_lora(strip(&model), &config, 2).unwrap();
    let (same, _) = import_peft(same, &path, "transformer.").unwrap();
    assert!(max_abs_diff(out, run_mmdit(&same, 4)) < 1e-5);
    let layer = &same.transformer_blocks[1].attn.to_add_out.as_ref().unwrap();
    assert_eq!(layer.scale, 2.0);
    std::fs::remove_file(&path).unwrap();
}

/// `model` without its adapters (same base weights).
fn strip<M: LoraTarget<B>>(model: &M) -> M {
    model.clone().map_lora(&mut |_, l| LoraLinear::new(l.base))
}

#[test]
fn import_errors_name_the_key() {
    let path = temp_file("errors.safetensors");
    let (model, _) = apply_lora(unet::<B>(), &LoraConfig::unet_default().with_rank(2), 0).unwrap();
    export_peft(&model, &path, "unet.").unwrap();
    let key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight";

    // Rank 3 adapters in the model, rank 2 in the file.
    let (rank3, _) = apply_lora(unet::<B>(), &LoraConfig::unet_default().with_rank(3), 0).unwrap();
    let err = import_peft(rank3, &path, "unet.").unwrap_err().to_string();
    assert!(err.contains(key) && err.contains("rank 2"), "{err}");

    // A different model width: shapes do not fit.
    let mut config = UNet2DConditionConfig::tiny();
    config.block_out_channels = vec![16, 64];
    let narrow = config.init::<B>(&Default::default());
    let err = import_peft(narrow, &path, "unet.").unwrap_err().to_string();
    assert!(err.contains(key) && err.contains("[2, 32]"), "{err}");

    // Wrong prefix.
    let err = import_peft(unet::<B>(), &path, "transformer.")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"transformer.\""), "{err}");

    // A lora_B without its lora_A, and an adapter on a layer that cannot carry one.
    let mut file = crate::weights::TensorFile::read(&path).unwrap().tensors;
    file.remove(key);
    let ff = "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.lora_A.weight";
    file.insert(ff.into(), (vec![2, 128], vec![0.0; 256]));
    write_tensor_file(&path, &file, None).unwrap();
    let err = import_peft(unet::<B>(), &path, "unet.")
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{key} missing")), "{err}");
    assert!(err.contains(ff), "{err}");

    let err = export_peft(&unet::<B>(), &path, "unet.")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no LoRA adapters"), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn base_keys_ignore_adapters() {
    let (model, _) = apply_lora(unet::<B>(), &LoraConfig::unet_default(), 0).unwrap();
    let base: Vec<_> = expected_tensors(&model)
        .into_iter()
        .filter(|t| !crate::weights::is_adapter_path(&t.path))
        .map(|t| (t.key, t.shape))
        .collect();
    let plain: Vec<_> = expected_tensors(&unet::<B>())
        .into_iter()
        .map(|t| (t.key, t.shape))
        .collect();
    assert_eq!(base, plain);
}
