//! UNet forward and forward+backward, with hooks off, on the cross-attention maps (what CTCal
//! uses) and on every site (which forces the explicit softmax everywhere), tiny and full SD 2.1.
//!
//! ```text
//! cargo bench --bench unet                          # tiny config, ndarray
//! cargo bench --bench unet -- --full                # + full SD 2.1 at 64x64 latents, batch 1
//! cargo bench --bench unet --features cuda -- --backend cuda --full --batch 8
//! ```
//! Prints the median time of each case and its ratio to the hooks-off case of the same run.

#[macro_use]
mod common;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use common::{Opts, compare};
use ctcal::attention::{AttentionBackend, AutodiffAttentionBackend};
use ctcal::attention::{AttentionHook, AttentionSite, AttentionStore, NoHook, SiteFilter};
use ctcal::unet::{UNet2DConditionConfig, UNet2DConditionModel};

/// Wants every site and drops the probabilities: measures the explicit path alone.
struct AllSites;

impl<B: Backend> AttentionHook<B> for AllSites {
    fn wants(&self, _site: &AttentionSite) -> bool {
        true
    }
    fn on_probs(&mut self, _site: &AttentionSite, _grid: [usize; 2], _probs: Tensor<B, 4>) {}
}

/// Runs the model once with the named hook mode; returns a scalar that depends on the maps
/// (so a backward pays for keeping them).
fn step<B: AttentionBackend>(
    unet: &UNet2DConditionModel<B>,
    inputs: &(Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 3>),
    hook: &str,
) -> Tensor<B, 1> {
    let (sample, t, ctx) = inputs.clone();
    match hook {
        "off" => unet.forward_with_hook(sample, t, ctx, &mut NoHook).mean(),
        "cross" => {
            let mut store = AttentionStore::new(SiteFilter::cross());
            let out = unet.forward_with_hook(sample, t, ctx, &mut store);
            store
                .take()
                .into_iter()
                .fold(out.mean(), |acc, m| acc + m.probs.mean().mul_scalar(0.0))
        }
        _ => unet.forward_with_hook(sample, t, ctx, &mut AllSites).mean(),
    }
}

fn inputs<B: Backend>(
    batch: usize,
    latent: usize,
    ctx_dim: usize,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 3>) {
    let normal = Distribution::Normal(0.0, 1.0);
    (
        Tensor::random([batch, 4, latent, latent], normal, device),
        Tensor::from_floats(vec![500.0f32; batch].as_slice(), device),
        Tensor::random([batch, 77, ctx_dim], normal, device),
    )
}

fn bench_config<B: AutodiffAttentionBackend>(
    name: &str,
    config: UNet2DConditionConfig,
    latent: usize,
    opts: &Opts,
    device: &B::Device,
) {
    let unet = config.init::<B>(device);
    let train_inputs = inputs::<B>(opts.batch, latent, config.cross_attention_dim, device);
    let eval_unet = unet.valid();
    let eval_inputs =
        inputs::<B::InnerBackend>(opts.batch, latent, config.cross_attention_dim, device);
    let labels = [
        ("off", "hooks off"),
        ("cross", "cross maps kept"),
        ("all", "all explicit"),
    ];
    compare(name, &labels, opts, |hook, backward| {
        if backward {
            let _grads = step(&unet, &train_inputs, hook).backward();
            let _ = B::sync(device);
        } else {
            let _ = step(&eval_unet, &eval_inputs, hook).into_data();
        }
    });
}

fn run<B: AutodiffAttentionBackend>(opts: &Opts, device: &B::Device) {
    println!(
        "backend {}, batch {}, median of {} after one warm-up",
        opts.backend, opts.batch, opts.iters
    );
    bench_config::<B>("tiny", UNet2DConditionConfig::tiny(), 32, opts, device);
    if opts.full {
        bench_config::<B>("sd21", UNet2DConditionConfig::sd21(), 64, opts, device);
    }
}

fn main() {
    let opts = Opts::from_args();
    dispatch!(opts, run);
}
