//! Training steps at Stable Diffusion size, to run beside `torch_anchor.py` and `torch_block.py`
//! on a GPU (issue 8). One workload per process, so a failure costs one figure and the peak
//! device memory of each can be read from outside (`nvidia-smi`).
//!
//! ```text
//! cargo bench --features cuda --bench gpu_step --no-run     # build here, carry the binary
//! gpu_step --workload block --dtype f32   # one SD 2.1 BasicTransformerBlock, 320 ch, 4096 tokens
//! gpu_step --workload attn  --dtype f32   # the attention op alone: burn's kernel vs chunked
//! gpu_step --workload sd21  --dtype bf16  # UNet plain and CTCal optimiser steps, 512 px
//! gpu_step --workload sd3   --dtype bf16  # SD3-medium plain flow optimiser step, 512 px
//! gpu_step --workload attn-check          # the backend's attention op against the chunked reference
//! ```
//! `--backend tch` (feature `tch`) runs on LibTorch's first CUDA device (`--cpu`: its CPU).
//! `--backend ndarray` (the default when cuda is not compiled in) runs the same code on the CPU
//! at `--latent 8 --tiny` as a smoke test. Prints one JSON line per measured case.
//!
//! `--dtype mixed` is the training recipe of `torch_anchor.py`'s autocast: parameters and AdamW
//! state in f32 on `Cuda<f32>`, each step on a bf16 copy made by `precision::cast_params`
//! (norms kept f32, softmax and losses in f32). `--dtype bf16` runs the whole model on
//! `Cuda<bf16>` (parameters and optimiser state in bf16 too), a measure of the bf16 compute
//! path alone.

mod common;

use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Element, ElementConversion, FloatDType, Tensor};
use common::{arg, flag, time_with_warmup};
use ctcal::attention::{
    AttentionBackend, AttentionConfig, AttentionKind, AttentionSite, AttentionStore,
    AutodiffAttentionBackend, BlockPos, NoHook, SiteFilter, Slot,
};
use ctcal::calibration::{CtcalConfig, MapAutoEncoderConfig, StepDraw, TrainBatch, ctcal_step};
use ctcal::denoiser::{Denoiser, TextCond};
use ctcal::mmdit::SD3Transformer2DConfig;
use ctcal::nn::{FeedForwardActivation, FeedForwardConfig};
use ctcal::nouns::NounGroups;
use ctcal::precision::{cast_params, upcast};
use ctcal::schedule::Schedule;
use ctcal::schedule::{DdpmConfig, FlowConfig};
use ctcal::unet::{BasicTransformerBlock, UNet2DConditionConfig};

struct Opts {
    workload: String,
    dtype: String,
    batch: usize,
    latent: usize,
    iters: usize,
    tiny: bool,
}

fn report(o: &Opts, case: &str, (t, warm): (f64, f64)) {
    println!(
        "{{\"workload\":\"{}\",\"dtype\":\"{}\",\"batch\":{},\"latent\":{},\"case\":\"{case}\",\"ms\":{:.3},\"warmup_s\":{:.2}}}",
        o.workload,
        o.dtype,
        o.batch,
        o.latent,
        t * 1e3,
        warm
    );
}

/// The compute type of `--dtype mixed`: bf16 under f32 masters; f32 under f64 masters (the
/// CPU smoke run, ndarray has no bf16).
fn compute_dtype<B: Backend>() -> FloatDType {
    match B::FloatElem::dtype() {
        DType::F64 => FloatDType::F32,
        _ => FloatDType::BF16,
    }
}

fn site(kind: AttentionKind, index: usize) -> AttentionSite {
    AttentionSite {
        index,
        kind,
        heads: 5,
        downscale: 1,
        block: BlockPos::Down(0),
        attention: 0,
        transformer_block: 0,
        slot: if kind == AttentionKind::Cross {
            Slot::Attn2
        } else {
            Slot::Attn1
        },
    }
}

/// torch_block.py's block: SD 2.1's first-level BasicTransformerBlock (320 channels, 5 heads of
/// 64, 64x64 tokens, 77x1024 context).
fn block<B: AutodiffAttentionBackend>(o: &Opts, device: &B::Device) {
    let c = if o.tiny { 40 } else { 320 };
    let ctx_dim = if o.tiny { 32 } else { 1024 };
    let attn = |cross: Option<usize>, kind, i| {
        AttentionConfig::new(c, 5, c / 5)
            .with_cross_attention_dim(cross)
            .init(site(kind, i), device)
    };
    let norm = || burn::nn::LayerNormConfig::new(c).init(device);
    let mut blk = BasicTransformerBlock::<B> {
        norm1: norm(),
        attn1: attn(None, AttentionKind::SelfAttention, 0),
        norm2: norm(),
        attn2: attn(Some(ctx_dim), AttentionKind::Cross, 1),
        norm3: norm(),
        ff: FeedForwardConfig::new(c, 4 * c, FeedForwardActivation::Geglu).init(device),
    };
    let n = o.latent * o.latent;
    let normal = Distribution::Normal(0.0, 1.0);
    let mut x = Tensor::<B, 3>::random([o.batch, n, c], normal, device).require_grad();
    let mut ctx = Tensor::<B, 3>::random([o.batch, 77, ctx_dim], normal, device);
    if o.dtype == "mixed" {
        // As autocast would run it: bf16 weights and activations, norms and softmax in f32
        // (here the casts are made once, outside the timed calls).
        blk = cast_params(&blk, compute_dtype::<B>());
        x = x.cast(compute_dtype::<B>());
        ctx = ctx.cast(compute_dtype::<B>());
    }
    let grid = [o.latent, o.latent];
    let eval = blk.valid();
    let (xi, ci) = (x.clone().inner(), ctx.clone().inner());
    report(
        o,
        "fwd",
        time_with_warmup(4, o.iters, || {
            let y = eval.forward(xi.clone(), ci.clone(), grid, &mut NoHook);
            let _ = y.mean().into_data();
        }),
    );
    report(
        o,
        "fwd+bwd",
        time_with_warmup(4, o.iters, || {
            let y = blk.forward(x.clone(), ctx.clone(), grid, &mut NoHook);
            let _g = y.mean().backward();
            let _ = B::sync(device);
        }),
    );
    report(
        o,
        "fwd+bwd, cross probs",
        time_with_warmup(4, o.iters, || {
            let mut store =
                AttentionStore::new(SiteFilter::default().with_kinds([AttentionKind::Cross]));
            let y = blk.forward(x.clone(), ctx.clone(), grid, &mut store);
            let loss = store.take().into_iter().fold(upcast(y.mean()), |acc, m| {
                acc + m.probs.powi_scalar(2).mean()
            });
            let _g = loss.backward();
            let _ = B::sync(device);
        }),
    );
}

/// The attention op alone at the block's self-attention shape: burn's `attention` (its fused
/// kernel on cubecl when `scale` is `None`) against the crate's chunked forward, no autodiff,
/// and the crate's op forward+backward under autodiff.
fn attn<B: AutodiffAttentionBackend>(o: &Opts, device: &B::Device) {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    let n = o.latent * o.latent;
    let d = 64;
    let normal = Distribution::Normal(0.0, 1.0);
    let qkv = || Tensor::<B::InnerBackend, 4>::random([o.batch, 5, n, d], normal, device);
    let (q, k, v) = (qkv(), qkv(), qkv());
    let scale = 1.0 / (d as f64).sqrt();
    report(
        o,
        "burn attention (scale None)",
        time_with_warmup(4, o.iters, || {
            let out = attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                AttentionModuleOptions::default(),
            );
            let _ = B::InnerBackend::sync(device);
            drop(out);
        }),
    );
    report(
        o,
        "crate chunked forward",
        time_with_warmup(4, o.iters, || {
            let out =
                ctcal::attention::efficient_attention(q.clone(), k.clone(), v.clone(), scale, None);
            let _ = B::InnerBackend::sync(device);
            drop(out);
        }),
    );
    if flag("--burn-autodiff") {
        // The failure of performance.md: burn's own attention under autodiff (the fallback
        // that materialises softmax(q k^T) for the backward). Last, since it may not return.
        let (qa, ka, va) = (
            Tensor::<B, 4>::from_inner(q).require_grad(),
            Tensor::<B, 4>::from_inner(k).require_grad(),
            Tensor::<B, 4>::from_inner(v).require_grad(),
        );
        report(
            o,
            "burn attention fwd+bwd",
            time_with_warmup(2, o.iters, || {
                let out = attention(
                    qa.clone(),
                    ka.clone(),
                    va.clone(),
                    None,
                    None,
                    AttentionModuleOptions::default(),
                );
                let _g = out.mean().backward();
                let _ = B::sync(device);
            }),
        );
        return;
    }
    let (qa, ka, va) = (
        Tensor::<B, 4>::from_inner(q.clone()).require_grad(),
        Tensor::<B, 4>::from_inner(k.clone()).require_grad(),
        Tensor::<B, 4>::from_inner(v.clone()).require_grad(),
    );
    report(
        o,
        "crate op fwd+bwd",
        time_with_warmup(4, o.iters, || {
            let out = ctcal::attention::efficient_attention(
                qa.clone(),
                ka.clone(),
                va.clone(),
                scale,
                None,
            );
            let _g = out.mean().backward();
            let _ = B::sync(device);
        }),
    );
}

/// One optimiser step per call: `ctcal_step`, backward, AdamW (lr 1e-5, like torch_anchor.py).
fn train_steps<B, M>(o: &Opts, model: M, data: TrainBatch<B>, schedule: Schedule, sd3: bool)
where
    B: AutodiffAttentionBackend,
    M: AutodiffModule<B> + Denoiser<B> + Clone,
    M::InnerModule: Denoiser<B::InnerBackend>,
{
    let device = data.latents.device();
    let ae = MapAutoEncoderConfig::new().init::<B>(&device);
    let b = o.batch;
    let draw = StepDraw {
        noise: Tensor::<B, 4>::random(data.latents.dims(), Distribution::Normal(0.0, 1.0), &device),
        student: (0..b)
            .map(|i| {
                if sd3 {
                    0.3 + 0.05 * i as f64
                } else {
                    500.0 + i as f64
                }
            })
            .collect(),
        teacher: vec![if sd3 { 0.05 } else { 0.0 }; b],
    };
    let mut optim = AdamWConfig::new().init::<B, M>();
    let mut model = Some(model);
    let mixed = o.dtype == "mixed";
    // `--phases`: a device sync after each part of the step, and its time recorded.
    let phases = flag("--phases");
    let times: std::cell::RefCell<Vec<[f64; 4]>> = Default::default();
    let mut run = |config: &CtcalConfig| {
        let mut clock = std::time::Instant::now();
        let mut lap = || {
            if phases {
                let _ = B::sync(&device);
            }
            let t = clock.elapsed().as_secs_f64();
            clock = std::time::Instant::now();
            t
        };
        let m = model.take().expect("model");
        let compute = mixed.then(|| cast_params(&m, compute_dtype::<B>()));
        let cast = lap();
        let out = ctcal_step(
            compute.as_ref().unwrap_or(&m),
            &ae,
            &data,
            &draw,
            &schedule,
            config,
        )
        .expect("step");
        let forward = lap();
        let grads = GradientsParams::from_grads(out.loss.backward(), &m);
        let backward = lap();
        model = Some(optim.step(1e-5, m, grads));
        let _ = B::sync(&device);
        times.borrow_mut().push([cast, forward, backward, lap()]);
    };
    let base = if sd3 {
        CtcalConfig::sd3()
    } else {
        CtcalConfig::sd21()
    };
    let mut cases = vec![("plain step", base.clone().with_lambda_ctcal(0.0))];
    if !flag("--plain-only") {
        cases.push(("ctcal step", base));
    }
    for (case, config) in cases {
        report(o, case, time_with_warmup(2, o.iters, || run(&config)));
        if phases {
            let times = times.borrow();
            let timed = &times[times.len() - o.iters.max(1)..];
            let median = |i: usize| {
                let mut v: Vec<f64> = timed.iter().map(|t| t[i] * 1e3).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            println!(
                "{{\"workload\":\"{}\",\"dtype\":\"{}\",\"case\":\"{case} phases\",\"cast_ms\":{:.1},\"forward_ms\":{:.1},\"backward_ms\":{:.1},\"optimizer_ms\":{:.1}}}",
                o.workload,
                o.dtype,
                median(0),
                median(1),
                median(2),
                median(3)
            );
        }
    }
}

fn sd21<B: AutodiffAttentionBackend>(o: &Opts, device: &B::Device) {
    let config = if o.tiny {
        UNet2DConditionConfig::tiny()
    } else {
        UNet2DConditionConfig::sd21()
    };
    let unet = config.init::<B>(device);
    eprintln!("sd21: {} parameters", unet.num_params());
    let normal = Distribution::Normal(0.0, 1.0);
    let b = o.batch;
    let data = TrainBatch {
        latents: Tensor::<B, 4>::random([b, 4, o.latent, o.latent], normal, device),
        cond: TextCond {
            hidden: Tensor::random([b, 77, config.cross_attention_dim], normal, device),
            pooled: None,
        },
        nouns: vec![NounGroups(vec![vec![2], vec![5, 6]]); b],
        teacher: None,
    };
    train_steps(
        o,
        unet,
        data,
        Schedule::Ddpm(DdpmConfig::sd21().init()),
        false,
    );
}

fn sd3<B: AutodiffAttentionBackend>(o: &Opts, device: &B::Device) {
    let config = if o.tiny {
        SD3Transformer2DConfig::tiny()
    } else {
        SD3Transformer2DConfig::sd3_medium()
    };
    let model = config.init::<B>(device);
    eprintln!("sd3: {} parameters", model.num_params());
    let normal = Distribution::Normal(0.0, 1.0);
    let b = o.batch;
    let tokens = if o.tiny { 16 } else { 333 };
    let data = TrainBatch {
        latents: Tensor::<B, 4>::random(
            [b, config.in_channels, o.latent, o.latent],
            normal,
            device,
        ),
        cond: TextCond {
            hidden: Tensor::random([b, tokens, config.joint_attention_dim], normal, device),
            pooled: Some(Tensor::random(
                [b, config.pooled_projection_dim],
                normal,
                device,
            )),
        },
        nouns: vec![NounGroups(vec![vec![2], vec![5, 6]]); b],
        teacher: None,
    };
    train_steps(
        o,
        model,
        data,
        Schedule::Flow(FlowConfig::sd3_medium().init()),
        true,
    );
}

/// The backend's attention op (forward and gradients, under autodiff) against the chunked
/// reference computed in f32 on the inner backend, for self- and cross-attention shapes, in
/// f32 and in bf16; prints the largest error relative to the largest reference entry.
fn attn_check<B: AutodiffAttentionBackend>(o: &Opts, device: &B::Device) {
    use ctcal::attention::chunked;
    let n = o.latent * o.latent;
    let d = 64;
    let scale = 1.0 / (d as f64).sqrt();
    let normal = Distribution::Normal(0.0, 1.0);
    let rel = |ours: Tensor<B::InnerBackend, 4>, reference: &Tensor<B::InnerBackend, 4>| {
        let err = (upcast(ours) - reference.clone())
            .abs()
            .max()
            .into_scalar()
            .elem::<f64>();
        err / reference.clone().abs().max().into_scalar().elem::<f64>()
    };
    for (shape, n_k) in [("self", n), ("cross", 77)] {
        let make = |len| Tensor::<B::InnerBackend, 4>::random([o.batch, 5, len, d], normal, device);
        let (q, k, v, d_out) = (make(n), make(n_k), make(n_k), make(n));
        let (out, lse) = chunked::forward(q.clone(), k.clone(), v.clone(), scale, 256);
        let saved = chunked::Saved {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            out: out.clone(),
            lse,
        };
        let (dq, dk, dv) = chunked::backward(saved, d_out.clone(), scale, 256);
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            let leaf = |t: &Tensor<B::InnerBackend, 4>| {
                Tensor::<B, 4>::from_inner(t.clone().cast(dtype)).require_grad()
            };
            let (ql, kl, vl) = (leaf(&q), leaf(&k), leaf(&v));
            let ours = ctcal::attention::efficient_attention(
                ql.clone(),
                kl.clone(),
                vl.clone(),
                scale,
                None,
            );
            let loss = (upcast(ours.clone()) * Tensor::from_inner(d_out.clone())).sum();
            let grads = loss.backward();
            let grad = |t: &Tensor<B, 4>| t.grad(&grads).expect("gradient");
            println!(
                "{{\"workload\":\"attn-check\",\"case\":\"{shape} {dtype:?}\",\"batch\":{},\"n_q\":{n},\"n_k\":{n_k},\"out\":{:.2e},\"dq\":{:.2e},\"dk\":{:.2e},\"dv\":{:.2e}}}",
                o.batch,
                rel(ours.inner(), &out),
                rel(grad(&ql), &dq),
                rel(grad(&kl), &dk),
                rel(grad(&vl), &dv),
            );
        }
    }
}

fn run<B: AutodiffAttentionBackend>(o: &Opts, device: &B::Device)
where
    B::InnerBackend: AttentionBackend,
{
    match o.workload.as_str() {
        "block" => block::<B>(o, device),
        "attn" => attn::<B>(o, device),
        "attn-check" => attn_check::<B>(o, device),
        "sd21" => sd21::<B>(o, device),
        "sd3" => sd3::<B>(o, device),
        other => eprintln!("unknown workload {other} (block, attn, attn-check, sd21, sd3)"),
    }
}

fn main() {
    let o = Opts {
        workload: arg("--workload").unwrap_or_else(|| "block".into()),
        dtype: arg("--dtype").unwrap_or_else(|| "f32".into()),
        batch: arg("--batch").and_then(|v| v.parse().ok()).unwrap_or(8),
        latent: arg("--latent").and_then(|v| v.parse().ok()).unwrap_or(64),
        iters: arg("--iters").and_then(|v| v.parse().ok()).unwrap_or(5),
        tiny: flag("--tiny"),
    };
    let backend = arg("--backend").unwrap_or_else(|| {
        if cfg!(feature = "cuda-untuned") {
            "cuda".into()
        } else {
            "ndarray".into()
        }
    });
    use burn::backend::Autodiff;
    match (backend.as_str(), o.dtype.as_str()) {
        #[cfg(feature = "ndarray")]
        ("ndarray", "f32") => run::<Autodiff<burn::backend::NdArray<f32>>>(&o, &Default::default()),
        // f32 compute under f64 masters: the mixed code path on the CPU (smoke test).
        #[cfg(feature = "ndarray")]
        ("ndarray", "mixed") => {
            run::<Autodiff<burn::backend::NdArray<f64>>>(&o, &Default::default())
        }
        #[cfg(feature = "wgpu")]
        ("wgpu", "f32") => run::<Autodiff<burn::backend::Wgpu<f32>>>(&o, &Default::default()),
        #[cfg(feature = "cuda-untuned")]
        ("cuda", "f32" | "mixed") => {
            run::<Autodiff<burn::backend::Cuda<f32>>>(&o, &Default::default())
        }
        #[cfg(feature = "cuda-untuned")]
        ("cuda", "bf16") => {
            run::<Autodiff<burn::backend::Cuda<half::bf16>>>(&o, &Default::default())
        }
        // LibTorch on the first CUDA device, or on the CPU with `--cpu`.
        #[cfg(feature = "tch")]
        ("tch", dtype) => {
            use burn::backend::LibTorch;
            use burn::backend::libtorch::LibTorchDevice;
            let device = if flag("--cpu") {
                LibTorchDevice::Cpu
            } else {
                LibTorchDevice::Cuda(0)
            };
            match dtype {
                "f32" | "mixed" => run::<Autodiff<LibTorch<f32>>>(&o, &device),
                "bf16" => run::<Autodiff<LibTorch<half::bf16>>>(&o, &device),
                d => eprintln!("backend tch with dtype {d}: expected f32, mixed or bf16"),
            }
        }
        (b, d) => eprintln!("backend {b} with dtype {d} is not compiled in (see --features)"),
    }
}
