//! Mixed precision against the wide computation: f32 compute under f64 master weights on
//! ndarray, which refuses operations that mix dtypes, so a tensor left in the wrong type panics
//! here instead of silently converting.

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Distribution, FloatDType, Tensor};

use super::*;
use crate::calibration::{CtcalConfig, MapAutoEncoderConfig, StepDraw, TrainBatch, ctcal_step};
use crate::denoiser::{Denoiser, TextCond};
use crate::mmdit::SD3Transformer2DConfig;
use crate::nouns::NounGroups;
use crate::schedule::Schedule;
use crate::schedule::{DdpmConfig, FlowConfig};
use crate::unet::UNet2DConditionConfig;

type A = Autodiff<crate::TestBackend>;

/// Every float parameter: id, dtype, whether it sits in a norm layer, values as f64.
#[derive(Default)]
struct Params {
    depth_in_norm: usize,
    out: Vec<(ParamId, DType, bool, Vec<f64>)>,
}

impl ModuleVisitor<A> for Params {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        if self.depth_in_norm > 0 || WIDE_MODULES.contains(&container_type) {
            self.depth_in_norm += 1;
        }
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.depth_in_norm = self.depth_in_norm.saturating_sub(1);
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let t = param.val();
        let values = t
            .clone()
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap();
        self.out
            .push((param.id, t.dtype(), self.depth_in_norm > 0, values));
    }
}

fn params<M: Module<A>>(m: &M) -> Vec<(ParamId, DType, bool, Vec<f64>)> {
    let mut v = Params::default();
    m.visit(&mut v);
    v.out
}

#[test]
fn compute_copy_casts_all_but_norm_parameters_and_keeps_ids() {
    let unet = UNet2DConditionConfig::tiny().init::<A>(&Default::default());
    let master = params(&unet);
    let copy = params(&cast_params(&unet, FloatDType::F32));
    assert_eq!(master.len(), copy.len());
    let (mut narrow, mut wide) = (0, 0);
    for ((id, dt, in_norm, v), (cid, cdt, _, cv)) in master.iter().zip(&copy) {
        assert_eq!(id, cid);
        assert_eq!(*dt, DType::F64);
        if *in_norm {
            wide += 1;
            assert_eq!(*cdt, DType::F64, "norm parameter {id} was cast");
            assert_eq!(v, cv);
        } else {
            narrow += 1;
            assert_eq!(*cdt, DType::F32, "parameter {id} was not cast");
            for (a, b) in v.iter().zip(cv) {
                assert_eq!(*b, *a as f32 as f64);
            }
        }
    }
    assert!(narrow > 20 && wide > 5, "{narrow} cast, {wide} kept");
}

/// Loss and gradients of one step computed narrow (`cast_params`) and wide (the master model
/// itself): the relative error of the loss and of every parameter's gradient (in the master's
/// type) must be at f32 level, and not zero (the narrow run really ran narrow).
fn compare_step<M>(model: &M, batch: &TrainBatch<A>, draw: &StepDraw<A>, schedule: &Schedule)
where
    M: burn::module::AutodiffModule<A> + Denoiser<A>,
    M::InnerModule: Denoiser<crate::TestBackend>,
{
    let device = Default::default();
    let ae = MapAutoEncoderConfig::new().init::<A>(&device);
    let config = CtcalConfig::new()
        .with_layer_downscales(vec![1, 2])
        .with_map_downscale(2);
    let scalar = |t: Tensor<A, 1>| t.into_data().to_vec::<f64>().unwrap()[0];
    let wide = ctcal_step(model, &ae, batch, draw, schedule, &config).unwrap();
    let narrow = ctcal_step(
        &cast_params(model, FloatDType::F32),
        &ae,
        batch,
        draw,
        schedule,
        &config,
    )
    .unwrap();
    assert!(
        wide.parts.ctcal > 0.0,
        "no map loss: the check is blind to the maps"
    );
    assert_eq!(narrow.loss.dtype(), DType::F64);
    let (lw, ln) = (scalar(wide.loss.clone()), scalar(narrow.loss.clone()));
    let loss_err = (lw - ln).abs() / lw.abs();
    assert!(loss_err < 1e-6, "loss {ln} vs {lw}");
    let mut gw = GradientsParams::from_grads(wide.loss.backward(), model);
    let mut gn = GradientsParams::from_grads(narrow.loss.backward(), model);
    assert!(gw.len() > 20);
    assert_eq!(gw.len(), gn.len(), "parameters without a narrow gradient");
    let mut worst: f64 = 0.0;
    for (id, _, _, _) in params(model) {
        let Some(w) = gw
            .remove::<crate::TestBackend, 1>(id)
            .map(|t| t.into_data())
        else {
            continue;
        };
        let n = gn
            .remove::<crate::TestBackend, 1>(id)
            .expect("narrow gradient");
        assert_eq!(n.dtype(), DType::F64, "gradient not in the master type");
        let (w, n) = (
            w.to_vec::<f64>().unwrap(),
            n.into_data().to_vec::<f64>().unwrap(),
        );
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        let diff = w
            .iter()
            .zip(&n)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        if norm > 1e-9 {
            worst = worst.max(diff / norm);
        }
    }
    assert!(worst < 1e-4, "worst relative gradient error {worst:e}");
    assert!(
        worst > 1e-9 && loss_err > 0.0,
        "narrow and wide agree exactly ({worst:e}): the narrow run was not narrow"
    );
}

fn normal() -> Distribution {
    Distribution::Normal(0.0, 1.0)
}

#[test]
fn unet_step_in_f32_matches_f64() {
    let device = Default::default();
    let config = UNet2DConditionConfig::tiny();
    let unet = config.init::<A>(&device);
    let batch = TrainBatch {
        latents: Tensor::<A, 4>::random([2, 4, 8, 8], normal(), &device),
        cond: TextCond {
            hidden: Tensor::random([2, 5, config.cross_attention_dim], normal(), &device),
            pooled: None,
        },
        nouns: vec![
            NounGroups(vec![vec![1], vec![2, 3]]),
            NounGroups(vec![vec![4]]),
        ],
        teacher: None,
    };
    let draw = StepDraw {
        noise: Tensor::<A, 4>::random([2, 4, 8, 8], normal(), &device),
        student: vec![700.0, 300.0],
        teacher: vec![0.0, 0.0],
    };
    compare_step(
        &unet,
        &batch,
        &draw,
        &Schedule::Ddpm(DdpmConfig::sd21().init()),
    );
}

#[test]
fn mmdit_step_in_f32_matches_f64() {
    let device = Default::default();
    let config = SD3Transformer2DConfig::tiny();
    let model = config.init::<A>(&device);
    let batch = TrainBatch {
        latents: Tensor::<A, 4>::random([2, 4, 8, 8], normal(), &device),
        cond: TextCond {
            hidden: Tensor::random([2, 6, config.joint_attention_dim], normal(), &device),
            pooled: Some(Tensor::random(
                [2, config.pooled_projection_dim],
                normal(),
                &device,
            )),
        },
        nouns: vec![
            NounGroups(vec![vec![1], vec![2, 3]]),
            NounGroups(vec![vec![4]]),
        ],
        teacher: None,
    };
    let draw = StepDraw {
        noise: Tensor::<A, 4>::random([2, 4, 8, 8], normal(), &device),
        student: vec![0.8, 0.4],
        teacher: vec![0.05, 0.05],
    };
    compare_step(
        &model,
        &batch,
        &draw,
        &Schedule::Flow(FlowConfig::sd3_medium().init()),
    );
}
