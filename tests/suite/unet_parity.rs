//! The UNet against diffusers: outputs and every cross-attention map of the tiny fixtures
//! written by `scripts/make_fixtures.py`, within relative error 1e-4 (f32).

use crate::common::{assert_maps, fixture, rel_err, values};
use burn::tensor::Tensor;
use ctcal::attention::{AttentionBackend, AttentionKind, AttentionStore, SiteFilter};
use ctcal::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use ctcal::weights::{TensorFile, load_module};

const TOL: f32 = 1e-4;

fn load_unet<B: AttentionBackend>(
    case: &str,
    folder: &str,
    device: &B::Device,
) -> UNet2DConditionModel<B> {
    let dir = fixture(case).join(folder);
    let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let (unet, report) = load_module(config.init::<B>(device), &dir, None).unwrap();
    assert!(report.tensors > 100, "{report:?}");
    unet
}

/// The `sample`, `timestep` and `encoder_hidden_states` of a fixture's inputs.
fn inputs<B: AttentionBackend>(
    case: &str,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 3>) {
    let f = TensorFile::read(&fixture(case).join("inputs.safetensors")).unwrap();
    (
        f.tensor("sample", device).unwrap(),
        f.tensor("timestep", device).unwrap(),
        f.tensor("encoder_hidden_states", device).unwrap(),
    )
}

/// Runs `case` and checks the output and every attn2 map against diffusers.
fn check_case<B: AttentionBackend>(case: &str, device: &B::Device) {
    let unet = load_unet::<B>(case, "unet", device);
    let expected = TensorFile::read(&fixture(case).join("outputs.safetensors")).unwrap();
    let mut store = AttentionStore::new(SiteFilter::cross());
    let (sample, t, ctx) = inputs::<B>(case, device);
    let out = unet.forward_with_hook(sample, t, ctx, &mut store);
    let err = rel_err(&values(out), &expected.tensors["out"].1);
    assert!(err < TOL, "{case}: output relative error {err}");

    let maps = store.take();
    let cross_sites = unet
        .sites()
        .iter()
        .filter(|s| s.kind == AttentionKind::Cross)
        .count();
    assert_eq!(maps.len(), cross_sites);
    assert_maps(case, maps, &expected, TOL);
}

#[test]
fn sd2_layout_matches_diffusers_ndarray() {
    check_case::<crate::common::Cpu>("unet_sd2", &Default::default());
}

#[test]
fn sd1_layout_matches_diffusers_ndarray() {
    check_case::<crate::common::Cpu>("unet_sd1", &Default::default());
}

/// The `.fp16` variant loads (cast to f32) and reproduces diffusers' output of the same
/// fp16-rounded weights.
#[test]
fn fp16_variant_loads_and_matches() {
    let device = Default::default();
    let unet = load_unet::<crate::common::Cpu>("unet_sd2", "unet_fp16", &device);
    let expected = TensorFile::read(&fixture("unet_sd2").join("outputs_fp16.safetensors")).unwrap();
    let (sample, t, ctx) = inputs::<crate::common::Cpu>("unet_sd2", &device);
    let out = unet.forward(sample, t, ctx);
    let err = rel_err(&values(out), &expected.tensors["out"].1);
    assert!(err < TOL, "fp16 variant: relative error {err}");
}

/// A sharded checkpoint with its index loads to the same weights as the single file.
#[test]
fn sharded_checkpoint_matches_single_file() {
    let device = Default::default();
    let single = load_unet::<crate::common::Cpu>("unet_sd2", "unet", &device);
    let sharded = load_unet::<crate::common::Cpu>("unet_sd2", "unet_sharded", &device);
    let run = |u: &UNet2DConditionModel<crate::common::Cpu>| {
        let (sample, t, ctx) = inputs::<crate::common::Cpu>("unet_sd2", &device);
        values(u.forward(sample, t, ctx))
    };
    assert_eq!(run(&single), run(&sharded));
}

#[cfg(feature = "wgpu-every-model")]
#[test]
fn sd2_layout_matches_diffusers_wgpu() {
    check_case::<crate::common::Gpu>("unet_sd2", &Default::default());
}

#[cfg(feature = "wgpu-every-model")]
#[test]
fn sd1_layout_matches_diffusers_wgpu() {
    check_case::<crate::common::Gpu>("unet_sd1", &Default::default());
}
