//! Plain diffusion step against CTCal step (teacher forward without graph + student forward
//! with the cross-attention maps kept + backward), tiny and full SD 2.1 configs.
//!
//! ```text
//! cargo bench --bench ctcal_step                       # tiny, 32x32 latents, batch 2
//! cargo bench --bench ctcal_step -- --full --latent 16 # + full SD 2.1 (small latents on CPU)
//! .venv/bin/python scripts/bench_tiny_torch.py          # PyTorch's plain step, same configs
//! ```
//! Prints the median step time of each and the CTCal/plain ratio from the same run
//! (PyTorch's is 1.37x on an H200 for SD 2.1 at 512 px, batch 8).

mod common;

use burn::backend::Autodiff;
use burn::tensor::{Distribution, Tensor};
use common::{arg, flag, time};
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::calibration::{CtcalConfig, MapAutoEncoderConfig, StepDraw, TrainBatch, ctcal_step};
use ctcal::denoiser::TextCond;
use ctcal::nouns::NounGroups;
use ctcal::schedule::DdpmConfig;
use ctcal::schedule::Schedule;
use ctcal::unet::UNet2DConditionConfig;

fn bench<B: AutodiffAttentionBackend>(
    name: &str,
    unet_config: UNet2DConditionConfig,
    latent: usize,
    batch: usize,
    iters: usize,
    device: &B::Device,
) {
    let unet = unet_config.init::<B>(device);
    let ae = MapAutoEncoderConfig::new().init::<B>(device);
    let normal = Distribution::Normal(0.0, 1.0);
    let data = TrainBatch {
        latents: Tensor::<B, 4>::random([batch, 4, latent, latent], normal, device),
        cond: TextCond {
            hidden: Tensor::random([batch, 77, unet_config.cross_attention_dim], normal, device),
            pooled: None,
        },
        nouns: vec![NounGroups(vec![vec![2], vec![5, 6]]); batch],
        teacher: None,
    };
    let draw = StepDraw {
        noise: Tensor::<B, 4>::random([batch, 4, latent, latent], normal, device),
        student: (0..batch).map(|i| 500.0 + i as f64).collect(),
        teacher: vec![0.0; batch],
    };
    let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
    let step = |config: &CtcalConfig| {
        time(iters, || {
            let out = ctcal_step(&unet, &ae, &data, &draw, &schedule, config).expect("step");
            let _grads = out.loss.backward();
            let _ = B::sync(device);
        })
    };
    let plain = step(&CtcalConfig::sd21().with_lambda_ctcal(0.0));
    let ctcal = step(&CtcalConfig::sd21());
    println!(
        "{name:>6} latent {latent} batch {batch}: plain {:>9.1} ms  ctcal {:>9.1} ms  ratio {:.2}x",
        plain * 1e3,
        ctcal * 1e3,
        ctcal / plain
    );
}

fn main() {
    let value = |f: &str| arg(f).and_then(|v| v.parse::<usize>().ok());
    let full = flag("--full");
    let batch = value("--batch").unwrap_or(2);
    let iters = value("--iters").unwrap_or(5);
    let latent = value("--latent").unwrap_or(64);
    let backend = arg("--backend").unwrap_or_else(|| "ndarray".into());
    match backend.as_str() {
        #[cfg(feature = "ndarray")]
        "ndarray" => bench_all::<Autodiff<burn::backend::NdArray<f32>>>(full, latent, batch, iters),
        #[cfg(feature = "wgpu")]
        "wgpu" => bench_all::<Autodiff<burn::backend::Wgpu<f32>>>(full, latent, batch, iters),
        #[cfg(feature = "cuda-untuned")]
        "cuda" => bench_all::<Autodiff<burn::backend::Cuda<f32>>>(full, latent, batch, iters),
        other => eprintln!("backend {other} is not compiled in (see --features)"),
    }
}

fn bench_all<B: AutodiffAttentionBackend>(full: bool, latent: usize, batch: usize, iters: usize) {
    let device = Default::default();
    bench::<B>(
        "tiny",
        UNet2DConditionConfig::tiny(),
        32,
        batch,
        iters,
        &device,
    );
    // The embedded default of train_sd21 (weights/tiny-sd21), random weights of its config.
    let embedded = std::path::Path::new("weights/tiny-sd21/unet/config.json");
    if let Ok(config) = UNet2DConditionConfig::from_diffusers_json(embedded) {
        bench::<B>("embed", config, 32, batch, iters, &device);
    }
    if full {
        bench::<B>(
            "sd21",
            UNet2DConditionConfig::sd21(),
            latent,
            batch,
            iters,
            &device,
        );
    }
}
