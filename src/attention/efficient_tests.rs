//! The memory-efficient attention op against the plain `softmax(q k^T * scale) v` path under
//! autodiff (outputs and dQ, dK, dV across shapes and chunk sizes), against central finite
//! differences, its log-sum-exp op likewise, and a CTCal step with and without burn's
//! `BalancedCheckpointing`.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::activation::softmax;
use burn::tensor::{Distribution, Tensor, TensorData};

use super::*;
use crate::attention::test_util::{rel_err, values};

type B = crate::TestBackend;
type A = Autodiff<B>;

fn plain<Bk: Backend>(
    q: Tensor<Bk, 4>,
    k: Tensor<Bk, 4>,
    v: Tensor<Bk, 4>,
    s: f64,
) -> Tensor<Bk, 4> {
    softmax(q.matmul(k.swap_dims(2, 3)) * s, 3).matmul(v)
}

/// Output and gradients `[out, dq, dk, dv]` of `sum(attention(q, k, v) * w)`; the gradients of
/// inputs not in `track` are `None`.
fn run(
    inputs: &[Tensor<B, 4>; 4],
    track: [bool; 3],
    f: impl Fn(Tensor<A, 4>, Tensor<A, 4>, Tensor<A, 4>) -> Tensor<A, 4>,
) -> (Vec<f64>, [Option<Vec<f64>>; 3]) {
    let [q, k, v, w] = inputs.clone();
    let wrap = |t: Tensor<B, 4>, on: bool| {
        let t = Tensor::<A, 4>::from_inner(t);
        if on { t.require_grad() } else { t }
    };
    let (q, k, v) = (wrap(q, track[0]), wrap(k, track[1]), wrap(v, track[2]));
    let out = f(q.clone(), k.clone(), v.clone());
    let grads = (out.clone() * Tensor::from_inner(w)).sum().backward();
    let grad = |t: &Tensor<A, 4>| t.grad(&grads).map(values);
    (values(out.inner()), [grad(&q), grad(&k), grad(&v)])
}

fn random_inputs(
    b: usize,
    h: usize,
    nq: usize,
    nk: usize,
    d: usize,
    dv: usize,
) -> [Tensor<B, 4>; 4] {
    let device = Default::default();
    let n =
        |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    [
        n([b, h, nq, d]),
        n([b, h, nk, d]),
        n([b, h, nk, dv]),
        n([b, h, nq, dv]),
    ]
}

/// Odd lengths, one head, cross-attention (n_q != n_k), d != d_v, chunks not dividing n_q,
/// chunk 1 and chunk >= n_q: output and all three gradients within 1e-10 of the plain path.
#[test]
fn efficient_attention_matches_plain_path_and_its_gradients() {
    // (batch, heads, n_q, n_k, d, d_v, chunk)
    let cases = [
        (2, 3, 13, 13, 4, 4, 5),
        (1, 1, 7, 7, 3, 3, 1),
        (2, 2, 9, 5, 4, 6, 64),
        (1, 2, 17, 23, 8, 5, 4),
        (3, 1, 11, 3, 2, 2, 11),
    ];
    for (b, h, nq, nk, d, dv, chunk) in cases {
        let inputs = random_inputs(b, h, nq, nk, d, dv);
        let scale = (d as f64).powf(-0.5);
        let (want, want_g) = run(&inputs, [true; 3], |q, k, v| plain(q, k, v, scale));
        let (got, got_g) = run(&inputs, [true; 3], |q, k, v| {
            efficient_attention(q, k, v, scale, Some(chunk))
        });
        let err = rel_err(&got, &want);
        assert!(
            err < 1e-10,
            "{:?} output: rel err {err}",
            (b, h, nq, nk, d, dv, chunk)
        );
        for (name, g, w) in itertools(&got_g, &want_g) {
            let err = rel_err(g.as_ref().unwrap(), w.as_ref().unwrap());
            assert!(
                err < 1e-10,
                "{:?} d{name}: rel err {err}",
                (b, h, nq, nk, d, dv, chunk)
            );
        }
    }
}

fn itertools<'a>(
    got: &'a [Option<Vec<f64>>; 3],
    want: &'a [Option<Vec<f64>>; 3],
) -> impl Iterator<Item = (&'static str, &'a Option<Vec<f64>>, &'a Option<Vec<f64>>)> {
    ["q", "k", "v"]
        .into_iter()
        .zip(got)
        .zip(want)
        .map(|((n, g), w)| (n, g, w))
}

/// Only the tracked inputs get gradients, and those still equal the plain path's; with nothing
/// tracked the untracked forward gives the same output.
#[test]
fn untracked_inputs_get_no_gradient() {
    let inputs = random_inputs(1, 2, 6, 4, 3, 3);
    let scale = 0.7;
    for track in [[false, false, true], [true, false, false], [false; 3]] {
        let (want, want_g) = run(&inputs, track, |q, k, v| plain(q, k, v, scale));
        let (got, got_g) = run(&inputs, track, |q, k, v| {
            efficient_attention(q, k, v, scale, Some(4))
        });
        assert!(rel_err(&got, &want) < 1e-12);
        for (name, g, w) in itertools(&got_g, &want_g) {
            assert_eq!(g.is_some(), w.is_some(), "d{name} presence");
            if let (Some(g), Some(w)) = (g, w) {
                assert!(rel_err(g, w) < 1e-10, "d{name}");
            }
        }
    }
}

/// Central differences of `sum(attention(q, k, v) * w)` for every input entry of a tiny case.
#[test]
fn efficient_attention_gradient_matches_finite_differences() {
    let inputs = random_inputs(1, 1, 3, 4, 2, 3);
    let scale = 0.9;
    let (_, grads) = run(&inputs, [true; 3], |q, k, v| {
        efficient_attention(q, k, v, scale, Some(2))
    });
    let loss = |ins: &[Tensor<B, 4>; 4]| {
        let [q, k, v, w] = ins.clone();
        let out = efficient_attention(q, k, v, scale, Some(2));
        (out * w).sum().into_scalar()
    };
    let eps = 1e-6;
    for (which, grad) in grads.iter().enumerate() {
        let grad = grad.as_ref().unwrap();
        let base = values(inputs[which].clone());
        let shape: [usize; 4] = inputs[which].dims();
        for i in 0..base.len() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let mut ins = inputs.clone();
                ins[which] = Tensor::from_data(TensorData::new(v, shape), &Default::default());
                loss(&ins)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - grad[i]).abs() < 1e-7 + 1e-6 * numeric.abs(),
                "input {which}[{i}]: autodiff {} vs finite difference {numeric}",
                grad[i]
            );
        }
    }
}

/// The log-sum-exp op's value and gradients against `log(sum(exp(s)))` under plain autodiff.
#[test]
fn logsumexp_matches_plain_path_and_its_gradients() {
    for (nq, nk, chunk) in [(9, 5, 4), (4, 11, 1), (6, 6, 100)] {
        let [q, k, _, _] = random_inputs(2, 3, nq, nk, 4, 4);
        let w = Tensor::<B, 4>::random([2, 3, nq, 1], Distribution::Normal(0.0, 1.0), &q.device());
        let scale = 0.5;
        let go = |f: &dyn Fn(Tensor<A, 4>, Tensor<A, 4>) -> Tensor<A, 4>| {
            let q = Tensor::<A, 4>::from_inner(q.clone()).require_grad();
            let k = Tensor::<A, 4>::from_inner(k.clone()).require_grad();
            let out = f(q.clone(), k.clone());
            let grads = (out.clone() * Tensor::from_inner(w.clone()))
                .sum()
                .backward();
            let g = |t: &Tensor<A, 4>| values(t.grad(&grads).unwrap());
            (values(out.inner()), g(&q), g(&k))
        };
        let want = go(&|q, k| (q.matmul(k.swap_dims(2, 3)) * scale).exp().sum_dim(3).log());
        let got = go(&|q, k| attention_logsumexp(q, k, scale, Some(chunk)));
        assert!(rel_err(&got.0, &want.0) < 1e-12, "value");
        assert!(rel_err(&got.1, &want.1) < 1e-10, "dq");
        assert!(rel_err(&got.2, &want.2) < 1e-10, "dk");
    }
}

/// Every parameter's id, for comparing two gradient sets of the same model.
struct Ids(Vec<(ParamId, usize)>);

impl<Bk: Backend> ModuleVisitor<Bk> for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        self.0.push((param.id, D));
    }
}

fn grad_values(grads: &GradientsParams, id: ParamId, rank: usize) -> Option<Vec<f64>> {
    fn get<const D: usize>(g: &GradientsParams, id: ParamId) -> Option<Vec<f64>> {
        g.get::<B, D>(id).map(|t| t.into_data().to_vec().unwrap())
    }
    match rank {
        1 => get::<1>(grads, id),
        2 => get::<2>(grads, id),
        4 => get::<4>(grads, id),
        r => panic!("unexpected parameter rank {r}"),
    }
}

/// A CTCal step of the tiny UNet gives the same loss and parameter gradients under
/// `Autodiff<_, BalancedCheckpointing>` as under plain `Autodiff`.
#[test]
fn checkpointed_ctcal_step_gives_the_same_gradients() {
    use crate::calibration::{CtcalConfig, MapAutoEncoderConfig, StepDraw, TrainBatch, ctcal_step};
    use crate::denoiser::TextCond;
    use crate::nouns::NounGroups;
    use crate::schedule::DdpmConfig;
    use crate::schedule::Schedule;
    use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
    type C = Autodiff<B, BalancedCheckpointing>;

    let device = Default::default();
    // Each run rebuilds its model with `from_inner(valid())`: cloning an inner module would
    // drop the parameters' `require_grad` flag.
    let unet = UNet2DConditionConfig::tiny().init::<A>(&device);
    let ae = MapAutoEncoderConfig::new().init::<A>(&device);
    let normal = Distribution::Normal(0.0, 1.0);
    let latents = Tensor::<B, 4>::random([2, 4, 8, 8], normal, &device);
    let noise = Tensor::<B, 4>::random([2, 4, 8, 8], normal, &device);
    let ctx = Tensor::<B, 3>::random([2, 5, 32], normal, &device);
    let config = CtcalConfig::new()
        .with_layer_downscales(vec![1, 2])
        .with_map_downscale(2);
    let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
    let mut ids = Ids(Vec::new());
    unet.visit(&mut ids);

    fn step<Ad: AutodiffAttentionBackend<InnerBackend = B>>(
        unet: &UNet2DConditionModel<A>,
        ae: &crate::calibration::MapAutoEncoder<A>,
        [latents, noise]: [Tensor<B, 4>; 2],
        ctx: Tensor<B, 3>,
        schedule: &Schedule,
        config: &CtcalConfig,
    ) -> (f64, GradientsParams) {
        let unet = UNet2DConditionModel::<Ad>::from_inner(unet.valid());
        let ae = crate::calibration::MapAutoEncoder::<Ad>::from_inner(ae.valid());
        let batch = TrainBatch {
            latents: Tensor::from_inner(latents),
            cond: TextCond {
                hidden: Tensor::from_inner(ctx),
                pooled: None,
            },
            nouns: vec![
                NounGroups(vec![vec![1], vec![2, 3]]),
                NounGroups(vec![vec![4]]),
            ],
            teacher: None,
        };
        let draw = StepDraw {
            noise: Tensor::from_inner(noise),
            student: vec![700.0, 300.0],
            teacher: vec![0.0, 0.0],
        };
        let out = ctcal_step(&unet, &ae, &batch, &draw, schedule, config).unwrap();
        let loss = out.loss.clone().inner().into_scalar();
        let grads = out.loss.backward();
        (loss, GradientsParams::from_grads(grads, &unet))
    }
    let inputs = [latents, noise];
    let (loss, plain) = step::<A>(&unet, &ae, inputs.clone(), ctx.clone(), &schedule, &config);
    let (loss_c, ckpt) = step::<C>(&unet, &ae, inputs, ctx, &schedule, &config);
    assert!(
        (loss - loss_c).abs() <= 1e-12 * loss.abs(),
        "loss {loss} vs {loss_c}"
    );
    let mut compared = 0;
    for (id, rank) in ids.0 {
        let (a, b) = (grad_values(&plain, id, rank), grad_values(&ckpt, id, rank));
        assert_eq!(a.is_some(), b.is_some(), "gradient presence of {id}");
        if let (Some(a), Some(b)) = (a, b) {
            assert!(
                rel_err(&b, &a) < 1e-10,
                "parameter {id}: rel err {}",
                rel_err(&b, &a)
            );
            compared += 1;
        }
    }
    assert!(compared > 20, "only {compared} parameters had gradients");
}
