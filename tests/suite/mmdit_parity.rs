//! The MMDiT against diffusers: outputs and the image-to-text block of every joint attention
//! of the tiny `SD3Transformer2DModel` fixtures written by `scripts/make_fixtures.py`, within
//! relative error 1e-4 (f32); the fp16 variant, the sharded copy and the position table.

use crate::common::{assert_maps, fixture, rel_err, values};
use burn::tensor::{Tensor, backend::Backend};
use ctcal::attention::{AttentionBackend, AttentionKind, AttentionStore, SiteFilter};
use ctcal::mmdit::{SD3Transformer2DConfig, SD3Transformer2DModel, sincos_table};
use ctcal::weights::{TensorFile, load_module};

const TOL: f32 = 1e-4;

fn load<B: AttentionBackend>(
    case: &str,
    folder: &str,
    device: &B::Device,
) -> SD3Transformer2DModel<B> {
    let dir = fixture(case).join(folder);
    let config = SD3Transformer2DConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let (model, report) = load_module(config.init::<B>(device), &dir, None).unwrap();
    assert!(report.tensors > 50, "{report:?}");
    model
}

struct Inputs<B: Backend> {
    x: Tensor<B, 4>,
    t: Tensor<B, 1>,
    ctx: Tensor<B, 3>,
    pooled: Tensor<B, 2>,
}

fn inputs<B: AttentionBackend>(case: &str, device: &B::Device) -> Inputs<B> {
    let f = TensorFile::read(&fixture(case).join("inputs.safetensors")).unwrap();
    Inputs {
        x: f.tensor("hidden_states", device).unwrap(),
        t: f.tensor("timestep", device).unwrap(),
        ctx: f.tensor("encoder_hidden_states", device).unwrap(),
        pooled: f.tensor("pooled_projections", device).unwrap(),
    }
}

/// Runs `case` and checks the output and every joint map against diffusers.
fn check_case<B: AttentionBackend>(case: &str, device: &B::Device) {
    let model = load::<B>(case, "transformer", device);
    let expected = TensorFile::read(&fixture(case).join("outputs.safetensors")).unwrap();
    let mut store = AttentionStore::new(SiteFilter::default().with_kinds([AttentionKind::Joint]));
    let i = inputs::<B>(case, device);
    let [_, _, h, w] = i.x.dims();
    let out = model.forward_with_hook(i.x, i.t, i.ctx, i.pooled, &mut store);
    let err = rel_err(&values(out), &expected.tensors["out"].1);
    assert!(err < TOL, "{case}: output relative error {err}");

    let maps = store.take();
    assert_eq!(
        maps.len(),
        model.transformer_blocks.len(),
        "one map per block"
    );
    assert!(
        maps.iter().all(|m| m.grid == [h / 2, w / 2]),
        "{case}: patch grid"
    );
    assert_maps(case, maps, &expected, TOL);
}

#[test]
fn sd3_matches_diffusers_ndarray() {
    check_case::<crate::common::Cpu>("mmdit_sd3", &Default::default());
}

#[test]
fn qk_norm_matches_diffusers_ndarray() {
    check_case::<crate::common::Cpu>("mmdit_qknorm", &Default::default());
}

#[test]
fn dual_attention_matches_diffusers_ndarray() {
    check_case::<crate::common::Cpu>("mmdit_dual", &Default::default());
}

/// Without a hook every layer takes the fused path: same output as the hooked run.
#[test]
fn fused_path_matches_diffusers() {
    let device = Default::default();
    let model = load::<crate::common::Cpu>("mmdit_dual", "transformer", &device);
    let expected = TensorFile::read(&fixture("mmdit_dual").join("outputs.safetensors")).unwrap();
    let i = inputs::<crate::common::Cpu>("mmdit_dual", &device);
    let out = model.forward(i.x, i.t, i.ctx, i.pooled);
    let err = rel_err(&values(out), &expected.tensors["out"].1);
    assert!(err < TOL, "fused path: relative error {err}");
}

/// The `.fp16` variant loads (cast to f32) and reproduces diffusers' output of the same
/// fp16-rounded weights; the sharded copy loads to the same weights as the single file.
#[test]
fn fp16_variant_and_shards_load() {
    let device = Default::default();
    let run = |m: &SD3Transformer2DModel<crate::common::Cpu>| {
        let i = inputs::<crate::common::Cpu>("mmdit_sd3", &device);
        values(m.forward(i.x, i.t, i.ctx, i.pooled))
    };
    let half = load::<crate::common::Cpu>("mmdit_sd3", "transformer_fp16", &device);
    let expected =
        TensorFile::read(&fixture("mmdit_sd3").join("outputs_fp16.safetensors")).unwrap();
    let err = rel_err(&run(&half), &expected.tensors["out"].1);
    assert!(err < TOL, "fp16 variant: relative error {err}");
    let single = load::<crate::common::Cpu>("mmdit_sd3", "transformer", &device);
    let sharded = load::<crate::common::Cpu>("mmdit_sd3", "transformer_sharded", &device);
    assert_eq!(run(&single), run(&sharded));
}

/// Our 2D sin-cos table equals the `pos_embed.pos_embed` buffer diffusers saved (the fixture
/// config: width 16, table 8x8, base 8 / 2 = 4), so freshly built models match diffusers too.
#[test]
fn position_table_matches_diffusers_buffer() {
    let file = TensorFile::read(
        &fixture("mmdit_sd3").join("transformer/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let (shape, stored) = &file.tensors["pos_embed.pos_embed"];
    assert_eq!(shape, &vec![1, 64, 16]);
    let ours = sincos_table(16, 8, 4);
    let err = rel_err(&ours, stored);
    assert!(err < 1e-6, "position table relative error {err}");
}

#[cfg(feature = "wgpu-every-model")]
#[test]
fn sd3_matches_diffusers_wgpu() {
    check_case::<crate::common::Gpu>("mmdit_sd3", &Default::default());
}

#[cfg(feature = "wgpu")]
#[test]
fn dual_attention_matches_diffusers_wgpu() {
    check_case::<crate::common::Gpu>("mmdit_dual", &Default::default());
}
