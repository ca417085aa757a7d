//! MMDiT forward and forward+backward with hooks off and with the joint image-to-text maps kept
//! (what CTCal uses), tiny and full SD 3 medium (64x64 latents, 333 text tokens).
//!
//! ```text
//! cargo bench --bench mmdit                          # tiny config, ndarray
//! cargo bench --bench mmdit -- --full --iters 1 --fwd-only  # + full SD 3 medium (CPU RAM)
//! cargo bench --bench mmdit --features cuda -- --backend cuda --full --batch 8
//! ```
//! Prints the median time of each case and its ratio to the hooks-off case of the same run.

#[macro_use]
mod common;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use common::{Opts, compare};
use ctcal::attention::{AttentionBackend, AutodiffAttentionBackend};
use ctcal::attention::{AttentionKind, AttentionStore, NoHook, SiteFilter};
use ctcal::mmdit::{SD3Transformer2DConfig, SD3Transformer2DModel};

type Inputs<B> = (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 3>, Tensor<B, 2>);

/// One forward; with `joint` the maps are kept and feed the returned scalar (so a backward
/// pays for them).
fn step<B: AttentionBackend>(
    model: &SD3Transformer2DModel<B>,
    inputs: &Inputs<B>,
    hook: &str,
) -> Tensor<B, 1> {
    let (x, t, ctx, pooled) = inputs.clone();
    if hook == "off" {
        return model
            .forward_with_hook(x, t, ctx, pooled, &mut NoHook)
            .mean();
    }
    let mut store = AttentionStore::new(SiteFilter::default().with_kinds([AttentionKind::Joint]));
    let out = model.forward_with_hook(x, t, ctx, pooled, &mut store);
    store
        .take()
        .into_iter()
        .fold(out.mean(), |acc, m| acc + m.probs.mean().mul_scalar(0.0))
}

fn inputs<B: Backend>(
    c: &SD3Transformer2DConfig,
    batch: usize,
    latent: usize,
    tokens: usize,
    device: &B::Device,
) -> Inputs<B> {
    let normal = Distribution::Normal(0.0, 1.0);
    (
        Tensor::random([batch, c.in_channels, latent, latent], normal, device),
        Tensor::from_floats(vec![500.0f32; batch].as_slice(), device),
        Tensor::random([batch, tokens, c.joint_attention_dim], normal, device),
        Tensor::random([batch, c.pooled_projection_dim], normal, device),
    )
}

fn bench_config<B: AutodiffAttentionBackend>(
    name: &str,
    config: SD3Transformer2DConfig,
    latent: usize,
    tokens: usize,
    opts: &Opts,
    device: &B::Device,
) {
    let model = config.init::<B>(device);
    let train_inputs = inputs::<B>(&config, opts.batch, latent, tokens, device);
    let eval_model = model.valid();
    let eval_inputs = inputs::<B::InnerBackend>(&config, opts.batch, latent, tokens, device);
    let labels = [("off", "hooks off"), ("joint", "joint maps kept")];
    compare(name, &labels, opts, |hook, backward| {
        if backward {
            let _grads = step(&model, &train_inputs, hook).backward();
            let _ = B::sync(device);
        } else {
            let _ = step(&eval_model, &eval_inputs, hook).into_data();
        }
    });
}

fn run<B: AutodiffAttentionBackend>(opts: &Opts, device: &B::Device) {
    println!(
        "backend {}, batch {}, median of {} after one warm-up",
        opts.backend, opts.batch, opts.iters
    );
    bench_config::<B>("tiny", SD3Transformer2DConfig::tiny(), 32, 16, opts, device);
    if opts.full {
        bench_config::<B>(
            "sd3m",
            SD3Transformer2DConfig::sd3_medium(),
            64,
            333,
            opts,
            device,
        );
    }
}

fn main() {
    let opts = Opts::from_args();
    dispatch!(opts, run);
}
