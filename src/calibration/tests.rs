//! CTCal loss terms against closed forms, map aggregation by hand, and the step's gradient
//! against finite differences (which also shows the teacher branch adds no gradient).

use burn::backend::Autodiff;
use burn::tensor::{Distribution, Tensor, TensorData};

use super::*;
use crate::attention::{AttentionKind, AttentionSite, BlockPos, Slot, StoredMap};
use crate::denoiser::TextCond;
use crate::nouns::NounGroups;
use crate::schedule::{DdpmConfig, Schedule};
use crate::unet::UNet2DConditionConfig;

type B = crate::TestBackend;
type A = Autodiff<B>;

fn t3(values: &[f64], shape: [usize; 3]) -> Tensor<B, 3> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
}

fn scalar<Bk: burn::tensor::backend::Backend>(t: Tensor<Bk, 1>) -> f64 {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
}

/// Only the pixel and balance terms, whose closed forms need no auto-encoder.
fn pixel_balance_config() -> CtcalConfig {
    CtcalConfig::new()
        .with_semantic_weight(0.0)
        .with_recon_weight(0.0)
}

fn ae() -> MapAutoEncoder<B> {
    MapAutoEncoderConfig::new().init(&Default::default())
}

#[test]
fn pixel_term_is_scale_free_and_matches_closed_form() {
    let ae = ae();
    let config = pixel_balance_config();
    let s = t3(&[1.0, 2.0, 3.0, 4.0], [1, 2, 2]);
    // Teacher twice the student: identical after normalising.
    let [pixel, ..] = loss::sample_terms(s.clone(), s.clone().mul_scalar(2.0), &ae, &config);
    assert!(scalar(pixel).abs() < 1e-12);
    // Reversed teacher: normalised [.25 .5 .75 1] vs [1 .75 .5 .25] -> MSE 0.3125.
    let t = t3(&[4.0, 3.0, 2.0, 1.0], [1, 2, 2]);
    let [pixel, _, _, balance] = loss::sample_terms(s, t, &ae, &config);
    assert!((scalar(pixel) - 0.3125).abs() < 1e-6);
    assert_eq!(
        scalar(balance),
        0.0,
        "one noun is its own strongest subject"
    );
}

#[test]
fn balance_term_closed_forms() {
    let ae = ae();
    let config = pixel_balance_config(); // tau = 0.05
    let teacher = t3(&[1.0; 8], [2, 2, 2]);
    let peaks =
        |a: f64, b: f64, rest: f64| t3(&[a, rest, rest, rest, b, rest, rest, rest], [2, 2, 2]);
    let balance = |s| scalar(loss::sample_terms(s, teacher.clone(), &ae, &config)[3].clone());
    let eps = loss::NORM_EPS;
    // Peaks 0.5 and 0.3: (0 + relu(1 - 0.05 - 0.3 / 0.5)) / 2 = 0.175.
    let want = (0.95 - 0.3 / (0.5 + eps)) / 2.0;
    assert!((balance(peaks(0.5, 0.3, 0.1)) - want).abs() < 1e-12);
    // Scale-free: the same maps a hundred times weaker (more text tokens share the softmax)
    // give the same term.
    let want = (0.95 - 0.003 / (0.005 + eps)) / 2.0;
    assert!((balance(peaks(0.005, 0.003, 0.001)) - want).abs() < 1e-9);
    assert!((want - 0.175).abs() < 1e-5);
    // Equal peaks, and a peak at exactly (1 - tau) of the strongest: nothing to push.
    assert_eq!(balance(peaks(0.4, 0.4, 0.1)), 0.0);
    assert!(balance(peaks(0.5, 0.475, 0.1)).abs() < 1e-7);
}

#[test]
fn batch_loss_weights_samples_and_skips_nounless_ones() {
    let ae = ae();
    let config = pixel_balance_config();
    let device = Default::default();
    let s = t3(&[1.0, 2.0, 3.0, 4.0], [1, 2, 2]);
    let t = t3(&[4.0, 3.0, 2.0, 1.0], [1, 2, 2]);
    let out = ctcal_loss(
        &[None, Some(s.clone())],
        &[None, Some(t.clone())],
        &[0.9, 0.5],
        &ae,
        &config,
        &device,
    )
    .unwrap();
    // Sample 0 has no noun: total = (0 + 0.5 * 0.3125) / 2.
    assert!((scalar(out.loss) - 0.078125).abs() < 1e-6);
    assert_eq!(out.samples_with_nouns, 1);
    assert!((out.parts[0] - 0.3125).abs() < 1e-6);
    let none = ctcal_loss(&[None], &[None], &[1.0], &ae, &config, &device).unwrap();
    assert_eq!(scalar(none.loss), 0.0);
    let err = ctcal_loss(
        &[Some(s)],
        &[Some(t3(&[1.0; 8], [2, 2, 2]))],
        &[1.0],
        &ae,
        &config,
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "sample 0: student maps Some([1, 2, 2]) and teacher maps Some([2, 2, 2]) differ"
        ),
        "{err}"
    );
}

fn stored(probs: Tensor<B, 4>, grid: [usize; 2], kind: AttentionKind) -> StoredMap<B> {
    let site = AttentionSite {
        index: 0,
        kind,
        heads: probs.dims()[1],
        downscale: 1,
        block: BlockPos::Down(0),
        attention: 0,
        transformer_block: 0,
        slot: Slot::Attn2,
    };
    StoredMap { site, grid, probs }
}

#[test]
fn token_maps_average_heads_and_layers_then_noun_maps_sum_tokens() {
    let device = Default::default();
    // Layer A on a 2x2 grid, 2 heads, 2 tokens: head 0 all 0.2/0.8, head 1 all 0.4/0.6.
    let mut a = Vec::new();
    for head in 0..2 {
        for _q in 0..4 {
            a.extend(if head == 0 { [0.2, 0.8] } else { [0.4, 0.6] });
        }
    }
    let a = Tensor::<B, 4>::from_data(TensorData::new(a, [1, 2, 4, 2]), &device);
    // Layer B on a 4x4 grid, 1 head: token 0 is 1.0 in the top-left 2x2 block, else 0.
    let mut b = Vec::new();
    for q in 0..16 {
        let (y, x) = (q / 4, q % 4);
        let v = if y < 2 && x < 2 { 1.0 } else { 0.0 };
        b.extend([v, 1.0 - v]);
    }
    let b = Tensor::<B, 4>::from_data(TensorData::new(b, [1, 1, 16, 2]), &device);
    let maps = vec![
        stored(a, [2, 2], AttentionKind::Cross),
        stored(b, [4, 4], AttentionKind::Cross),
    ];
    let tm = token_maps(&maps, [2, 2]).unwrap();
    let got = tm.clone().into_data().to_vec::<f64>().unwrap();
    // Token 0: layer A 0.3 everywhere; layer B area-averaged [1, 0, 0, 0]; mean of the two.
    let want0 = [0.65, 0.15, 0.15, 0.15];
    let want1 = [0.35, 0.85, 0.85, 0.85];
    for i in 0..4 {
        assert!((got[i] - want0[i]).abs() < 1e-12 && (got[4 + i] - want1[i]).abs() < 1e-12);
    }
    // One noun spanning both tokens sums to one everywhere.
    let nouns = noun_maps(tm.clone(), &[NounGroups(vec![vec![0, 1]])]).unwrap();
    let n = nouns[0]
        .clone()
        .unwrap()
        .into_data()
        .to_vec::<f64>()
        .unwrap();
    assert!(n.iter().all(|v| (v - 1.0).abs() < 1e-12));
    let err = noun_maps(tm, &[NounGroups(vec![vec![2]])])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("noun 0 uses token position 2, but the text has 2 tokens"),
        "{err}"
    );
}

#[test]
fn joint_blocks_are_renormalised_over_text() {
    let device = Default::default();
    // Image-to-text block of a joint softmax: rows sum to 0.5 (the rest went to image keys).
    let p = Tensor::<B, 4>::from_data(
        TensorData::new(vec![0.1, 0.4, 0.25, 0.25], [1, 1, 2, 2]),
        &device,
    );
    let tm = token_maps(&[stored(p, [1, 2], AttentionKind::Joint)], [1, 2]).unwrap();
    let got = tm.into_data().to_vec::<f64>().unwrap();
    let want = [0.2, 0.5, 0.8, 0.5]; // [token, y, x]
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{got:?}");
    }
}

/// The step's gradient with respect to the text embedding, autodiff against central
/// differences of the student loss with the teacher maps held fixed (balance term off: its
/// detached maximum is a deliberate stop-gradient that differences cannot see; it has its own
/// test). Autodiff of the full step
/// must equal it, so the teacher branch contributes nothing; and central differences of the
/// full step (teacher recomputed) must differ, so the check can tell.
#[test]
fn step_gradient_matches_finite_differences_and_teacher_is_constant() {
    let device = Default::default();
    let unet = UNet2DConditionConfig::tiny().init::<A>(&device);
    let ae = MapAutoEncoderConfig::new().init::<A>(&device);
    let config = CtcalConfig::new()
        .with_layer_downscales(vec![1, 2])
        .with_map_downscale(2)
        .with_balance_weight(0.0);
    let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
    let normal = Distribution::Normal(0.0, 1.0);
    let latents = Tensor::<A, 4>::random([2, 4, 8, 8], normal, &device);
    let ctx0 = Tensor::<B, 3>::random([2, 5, 32], normal, &device);
    let nouns = vec![
        NounGroups(vec![vec![1], vec![2, 3]]),
        NounGroups(vec![vec![4]]),
    ];
    let draw = StepDraw {
        noise: Tensor::<A, 4>::random([2, 4, 8, 8], normal, &device),
        student: vec![700.0, 300.0],
        teacher: vec![0.0, 0.0],
    };
    let batch_with = |ctx: Tensor<A, 3>| TrainBatch {
        latents: latents.clone(),
        cond: TextCond {
            hidden: ctx,
            pooled: None,
        },
        nouns: nouns.clone(),
        teacher: None,
    };

    let ctx = Tensor::<A, 3>::from_inner(ctx0.clone()).require_grad();
    let out = ctcal_step(
        &unet,
        &ae,
        &batch_with(ctx.clone()),
        &draw,
        &schedule,
        &config,
    )
    .unwrap();
    assert!(out.parts.ctcal > 0.0 && out.parts.pixel > 0.0 && out.parts.recon > 0.0);
    let grads = out.loss.backward();
    let analytic = ctx
        .grad(&grads)
        .unwrap()
        .into_data()
        .to_vec::<f64>()
        .unwrap();

    let teacher = teacher_maps(
        &unet,
        &batch_with(Tensor::from_inner(ctx0.clone())),
        &draw,
        &schedule,
        &config,
    )
    .unwrap();
    let base = ctx0.into_data().to_vec::<f64>().unwrap();
    let perturbed = |i: usize, d: f64| {
        let mut v = base.clone();
        v[i] += d;
        Tensor::<A, 3>::from_data(TensorData::new(v, [2, 5, 32]), &device)
    };
    let eps = 1e-5;
    let mut full_step_differs = false;
    for i in [0, 7, 33, 65, 100, 161, 250, 319] {
        let fixed = |d| {
            let out = student_loss(
                &unet,
                &ae,
                &batch_with(perturbed(i, d)),
                &draw,
                &schedule,
                &config,
                Some(teacher.clone()),
            );
            scalar(out.unwrap().loss)
        };
        let numeric = (fixed(eps) - fixed(-eps)) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() < 1e-6 + 1e-4 * numeric.abs(),
            "ctx[{i}]: autodiff {} vs finite difference {numeric}",
            analytic[i]
        );
        let full = |d| {
            scalar(
                ctcal_step(
                    &unet,
                    &ae,
                    &batch_with(perturbed(i, d)),
                    &draw,
                    &schedule,
                    &config,
                )
                .unwrap()
                .loss,
            )
        };
        let numeric_full = (full(eps) - full(-eps)) / (2.0 * eps);
        full_step_differs |= (numeric_full - analytic[i]).abs() > 1e-5 + 1e-3 * numeric_full.abs();
    }
    assert!(
        full_step_differs,
        "the teacher's dependence on the text never showed: the check is blind"
    );
}

#[test]
fn step_rejects_bad_input() {
    let device = Default::default();
    let unet = UNet2DConditionConfig::tiny().init::<A>(&device);
    let ae = MapAutoEncoderConfig::new().init::<A>(&device);
    let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
    let batch = TrainBatch {
        latents: Tensor::<A, 4>::zeros([1, 4, 8, 8], &device),
        cond: TextCond {
            hidden: Tensor::zeros([1, 3, 32], &device),
            pooled: None,
        },
        nouns: vec![NounGroups(vec![vec![1]])],
        teacher: None,
    };
    let draw = |t: f64| StepDraw {
        noise: Tensor::<A, 4>::zeros([1, 4, 8, 8], &device),
        student: vec![t],
        teacher: vec![0.0],
    };
    let config = CtcalConfig::new()
        .with_layer_downscales(vec![1, 2])
        .with_map_downscale(2);
    let err = ctcal_step(&unet, &ae, &batch, &draw(1000.0), &schedule, &config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("timestep[0] = 1000 is out of range 0..1000"),
        "{err}"
    );
    let far = TrainBatch {
        nouns: vec![NounGroups(vec![vec![3]])],
        teacher: None,
        ..batch.clone()
    };
    let err = ctcal_step(&unet, &ae, &far, &draw(10.0), &schedule, &config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("noun 0 uses token position 3, but the text has 3 tokens"),
        "{err}"
    );
    let none = config.clone().with_layer_downscales(vec![16]);
    let err = ctcal_step(&unet, &ae, &batch, &draw(10.0), &schedule, &none)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer selection matches no site"), "{err}");
}

/// Teacher maps given with the batch (an oracle's masks) replace the teacher pass: given the
/// model's own teacher maps the step is the self-teacher step to the last bit; other maps move
/// the CTCal terms and not the diffusion loss; maps of the wrong shape are refused by sample.
#[test]
fn given_teacher_maps_replace_the_teacher_pass() {
    let device = Default::default();
    let unet = UNet2DConditionConfig::tiny().init::<A>(&device);
    let ae = MapAutoEncoderConfig::new().init::<A>(&device);
    let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
    let normal = Distribution::Normal(0.0, 1.0);
    let batch = TrainBatch {
        latents: Tensor::<A, 4>::random([2, 4, 8, 8], normal, &device),
        cond: TextCond {
            hidden: Tensor::random([2, 5, 32], normal, &device),
            pooled: None,
        },
        nouns: vec![NounGroups(vec![vec![1], vec![2, 3]]), NounGroups(vec![])],
        teacher: None,
    };
    let draw = StepDraw {
        noise: Tensor::<A, 4>::random([2, 4, 8, 8], normal, &device),
        student: vec![700.0, 400.0],
        teacher: vec![0.0, 0.0],
    };
    let config = CtcalConfig::new()
        .with_layer_downscales(vec![1, 2])
        .with_map_downscale(2);
    let own = ctcal_step(&unet, &ae, &batch, &draw, &schedule, &config).unwrap();
    let maps = teacher_maps(&unet, &batch, &draw, &schedule, &config).unwrap();
    let given = |teacher| TrainBatch {
        teacher: Some(teacher),
        ..batch.clone()
    };
    let same = ctcal_step(&unet, &ae, &given(maps), &draw, &schedule, &config).unwrap();
    assert_eq!(same.parts, own.parts);
    // Left half of the 4x4 grid for the first noun, right half for the second.
    let half: Vec<f64> = (0..32)
        .map(|i| ((i % 4 < 2) == (i < 16)) as u8 as f64)
        .collect();
    let masks = Tensor::<A, 3>::from_data(TensorData::new(half, [2, 4, 4]), &device);
    let oracle = ctcal_step(
        &unet,
        &ae,
        &given(vec![Some(masks.clone()), None]),
        &draw,
        &schedule,
        &config,
    )
    .unwrap();
    assert_eq!(oracle.parts.diffusion, own.parts.diffusion);
    assert!(
        (oracle.parts.pixel - own.parts.pixel).abs() > 1e-3,
        "{oracle:?}"
    );
    let wrong = masks.slice([0..2, 0..2, 0..4]);
    let err = ctcal_step(
        &unet,
        &ae,
        &given(vec![Some(wrong), None]),
        &draw,
        &schedule,
        &config,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("sample 0: given teacher maps Some([2, 2, 4]) for 2 nouns on the 4x4"),
        "{err}"
    );
}

/// Hand-computed PyTorch values: `adaptive_avg_pool1d` of 5 to 2 uses bins [0, 3) and [2, 5);
/// `interpolate(linear, align_corners=False)` of 2 to 4 samples at -0.25, 0.25, 0.75, 1.25.
#[test]
fn resize_matrix_matches_pytorch_semantics() {
    let pool = maps::resize_matrix(5, 2);
    let third = 1.0 / 3.0;
    assert_eq!(
        pool,
        vec![third, third, third, 0.0, 0.0, 0.0, 0.0, third, third, third]
    );
    let up = maps::resize_matrix(2, 4);
    assert_eq!(up, vec![1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0]);
}

/// Balance gradient in closed form: with peaks p_i and S = max p (detached), d/dp_i of
/// mean_i ReLU(1 - tau - p_i / S) is -1/(n S) for an active noun and 0 for the strongest one;
/// it reaches only each map's arg-max pixel.
#[test]
fn balance_gradient_stops_at_the_strongest_subject() {
    let device = Default::default();
    let ae = MapAutoEncoderConfig::new().init::<A>(&device);
    let config = CtcalConfig::new()
        .with_pixel_weight(0.0)
        .with_semantic_weight(0.0)
        .with_recon_weight(0.0)
        .with_balance_weight(1.0);
    // Three nouns on 1x2 maps: peaks 0.9 (strongest), 0.5 (active), 0.88 (within tau:
    // 0.88 / 0.9 > 0.95).
    let values = vec![0.9, 0.1, 0.2, 0.5, 0.88, 0.3];
    let s = Tensor::<A, 3>::from_data(TensorData::new(values, [3, 1, 2]), &device).require_grad();
    let t = Tensor::<A, 3>::ones([3, 1, 2], &device);
    let out = ctcal_loss(
        &[Some(s.clone())],
        &[Some(t)],
        &[1.0],
        &ae,
        &config,
        &device,
    )
    .unwrap();
    let strongest = 0.9 + loss::NORM_EPS;
    assert!((scalar(out.loss.clone()) - (0.95 - 0.5 / strongest) / 3.0).abs() < 1e-12);
    let grad = s
        .grad(&out.loss.backward())
        .unwrap()
        .into_data()
        .to_vec::<f64>()
        .unwrap();
    let want = [0.0, 0.0, 0.0, -1.0 / (3.0 * strongest), 0.0, 0.0];
    for (g, w) in grad.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{grad:?}");
    }
}
