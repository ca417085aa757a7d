//! Hook behaviour: the explicit path equals the fused path and a naive reference, declined
//! sites receive nothing, and the probabilities carry gradients (checked by finite differences).

use burn::backend::Autodiff;
use burn::tensor::{Distribution, Tensor, TensorData};

use super::*;
use crate::unet::UNet2DConditionConfig;

type B = crate::TestBackend;

fn site(index: usize, kind: AttentionKind) -> AttentionSite {
    AttentionSite {
        index,
        kind,
        heads: 2,
        downscale: 1,
        block: BlockPos::Down(0),
        attention: 0,
        transformer_block: 0,
        slot: Slot::Attn2,
    }
}

/// Wants every site and keeps what it gets.
#[derive(Default)]
struct Recorder {
    only: Option<usize>,
    got: Vec<(usize, Vec<usize>)>,
}

impl<Bk: Backend> AttentionHook<Bk> for Recorder {
    fn wants(&self, site: &AttentionSite) -> bool {
        self.only.is_none_or(|i| i == site.index)
    }
    fn on_probs(&mut self, site: &AttentionSite, _grid: [usize; 2], probs: Tensor<Bk, 4>) {
        self.got.push((site.index, probs.dims().to_vec()));
    }
}

fn naive(q: &[f64], k: &[f64], v: &[f64], dims: [usize; 5]) -> Vec<f64> {
    // dims: batch*heads, nq, nk, d, dv (all contiguous per head)
    let [bh, nq, nk, d, dv] = dims;
    let scale = (d as f64).powf(-0.5);
    let mut out = vec![0.0; bh * nq * dv];
    for h in 0..bh {
        for i in 0..nq {
            let s: Vec<f64> = (0..nk)
                .map(|j| {
                    (0..d)
                        .map(|x| q[(h * nq + i) * d + x] * k[(h * nk + j) * d + x])
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for j in 0..nk {
                for x in 0..dv {
                    out[(h * nq + i) * dv + x] += e[j] / z * v[(h * nk + j) * dv + x];
                }
            }
        }
    }
    out
}

#[test]
fn explicit_and_fused_paths_match_naive_reference() {
    let device = Default::default();
    let (b, h, nq, nk, d) = (2, 3, 5, 7, 4);
    let q = Tensor::<B, 4>::random([b, h, nq, d], Distribution::Normal(0.0, 1.0), &device);
    let k = Tensor::<B, 4>::random([b, h, nk, d], Distribution::Normal(0.0, 1.0), &device);
    let v = Tensor::<B, 4>::random([b, h, nk, d], Distribution::Normal(0.0, 1.0), &device);
    let vals = |t: &Tensor<B, 4>| t.clone().into_data().to_vec::<f64>().unwrap();
    let want = naive(&vals(&q), &vals(&k), &vals(&v), [b * h, nq, nk, d, d]);
    let s = site(0, AttentionKind::Cross);
    let fused = attend(
        q.clone(),
        k.clone(),
        v.clone(),
        &s,
        [1, nq],
        false,
        &mut NoHook,
    );
    let mut rec = Recorder::default();
    let explicit = attend(q, k, v, &s, [1, nq], true, &mut rec);
    for got in [fused, explicit] {
        let got = got.into_data().to_vec::<f64>().unwrap();
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-5, "max abs error {err}");
    }
    assert_eq!(rec.got, vec![(0, vec![b, h, nq, nk])]);
}

#[test]
fn declined_sites_receive_nothing_and_outputs_agree() {
    let device = Default::default();
    let unet = UNet2DConditionConfig::tiny().init::<B>(&device);
    let sample = Tensor::<B, 4>::random([1, 4, 8, 6], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<B, 1>::from_floats([10.0], &device);
    let ctx = Tensor::<B, 3>::random([1, 3, 32], Distribution::Normal(0.0, 1.0), &device);
    let plain = unet.forward(sample.clone(), t.clone(), ctx.clone());
    let wanted = unet.sites()[1].index;
    let mut rec = Recorder {
        only: Some(wanted),
        got: vec![],
    };
    let hooked = unet.forward_with_hook(sample.clone(), t.clone(), ctx.clone(), &mut rec);
    assert_eq!(rec.got.len(), 1);
    assert_eq!(rec.got[0].0, wanted);
    let mut all = Recorder::default();
    let all_out = unet.forward_with_hook(sample, t, ctx, &mut all);
    assert_eq!(all.got.len(), unet.sites().len());
    let plain = plain.into_data().to_vec::<f64>().unwrap();
    for other in [hooked, all_out] {
        let other = other.into_data().to_vec::<f64>().unwrap();
        let err = plain
            .iter()
            .zip(&other)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-9, "hooked output differs by {err}");
    }
}

/// d/dx of a weighted sum of the captured probabilities, autodiff against central differences.
#[test]
fn captured_probs_carry_gradients() {
    type A = Autodiff<B>;
    let device = Default::default();
    let layer = AttentionConfig::new(6, 2, 3)
        .with_cross_attention_dim(Some(5))
        .init::<A>(site(0, AttentionKind::Cross), &device);
    let x0 = Tensor::<B, 3>::random([1, 4, 6], Distribution::Normal(0.0, 1.0), &device);
    let ctx = Tensor::<A, 3>::random([1, 3, 5], Distribution::Normal(0.0, 1.0), &device);
    let weights = Tensor::<A, 4>::random([1, 2, 4, 3], Distribution::Normal(0.0, 1.0), &device);
    let loss = |x: Tensor<A, 3>| {
        let mut store = AttentionStore::new(SiteFilter::cross());
        let _ = layer.forward(x, Some(ctx.clone()), [2, 2], &mut store);
        let probs = store.take().remove(0).probs;
        (probs * weights.clone()).sum()
    };
    let x = Tensor::<A, 3>::from_inner(x0.clone()).require_grad();
    let grads = loss(x.clone()).backward();
    let analytic = x.grad(&grads).unwrap().into_data().to_vec::<f64>().unwrap();
    let base = x0.into_data().to_vec::<f64>().unwrap();
    let eps = 1e-6;
    for i in 0..base.len() {
        let eval = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            let t = Tensor::<A, 3>::from_data(TensorData::new(v, [1, 4, 6]), &device);
            loss(t).into_scalar()
        };
        let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
            "x[{i}]: autodiff {} vs finite difference {numeric}",
            analytic[i]
        );
    }
}

/// Keeps the joint map in the view it asks for.
struct JointRecorder {
    view: JointView,
    got: Vec<Tensor<B, 4>>,
}

impl AttentionHook<B> for JointRecorder {
    fn wants(&self, _site: &AttentionSite) -> bool {
        true
    }
    fn on_probs(&mut self, _site: &AttentionSite, _grid: [usize; 2], probs: Tensor<B, 4>) {
        self.got.push(probs);
    }
    fn joint_view(&self, _site: &AttentionSite) -> JointView {
        self.view
    }
}

/// Joint attention: the block is the full map's image-to-text corner, full rows sum to one,
/// block rows to less, and the hooked output equals the fused one.
#[test]
fn joint_views_are_consistent() {
    let device = Default::default();
    let (n_image, n_text) = (6, 3);
    let rand = || {
        Tensor::<B, 4>::random(
            [2, 2, n_image + n_text, 4],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
    };
    let (q, k, v) = (rand(), rand(), rand());
    let s = site(0, AttentionKind::Joint);
    let run = |view| {
        let mut hook = JointRecorder {
            view,
            got: Vec::new(),
        };
        let out = attend_joint(
            q.clone(),
            k.clone(),
            v.clone(),
            n_image,
            &s,
            [2, 3],
            &mut hook,
        );
        (out, hook.got.remove(0))
    };
    let (out_block, block) = run(JointView::ImageToText);
    let (out_full, full) = run(JointView::Full);
    let fused = attend_joint(
        q.clone(),
        k.clone(),
        v.clone(),
        n_image,
        &s,
        [2, 3],
        &mut NoHook,
    );
    assert_eq!(block.dims(), [2, 2, n_image, n_text]);
    assert_eq!(full.dims(), [2, 2, n_image + n_text, n_image + n_text]);
    let corner = full
        .clone()
        .slice([0..2, 0..2, 0..n_image, n_image..n_image + n_text]);
    let diff = (corner - block.clone()).abs().max().into_scalar();
    assert!(
        diff < 1e-12,
        "block differs from the full map's corner by {diff}"
    );
    let row_err = (full.sum_dim(3) - 1.0).abs().max().into_scalar();
    assert!(row_err < 1e-12, "full rows sum to one within {row_err}");
    assert!(block.sum_dim(3).max().into_scalar() < 1.0);
    for out in [out_block, out_full] {
        let diff = (out - fused.clone()).abs().max().into_scalar();
        assert!(diff < 1e-10, "hooked output differs from fused by {diff}");
    }
}
