//! The same seeded CTCal steps on every backend compiled in, side by side: loss parts and step
//! time per backend, and a non-zero exit if any part disagrees with the first backend beyond
//! 1e-4 (relative). Swapping backends is a type parameter, nothing else changes.
//!
//! ```text
//! cargo run --release --example backend_swap                     # ndarray only
//! cargo run --release --example backend_swap --features wgpu     # ndarray and wgpu
//! cargo run --release --example backend_swap --features cuda,wgpu
//! LIBTORCH_USE_PYTORCH=1 cargo run --release --example backend_swap --features tch  # + LibTorch
//! ```
//! Runs the tiny UNet (`weights/tiny-sd21`) and the tiny MMDiT (`weights/tiny-sd3`) on the
//! first batch of `weights/tiny-data`, at three seeded draws of noise and levels each.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use ctcal::attention::AutodiffAttentionBackend;
use ctcal::calibration::{CtcalConfig, LossParts, StepDraw, ctcal_step};
use ctcal::data::{BadRowPolicy, Batch, CachedFeatures, DataCursor, Dataset};
use ctcal::denoiser::Denoiser;
use ctcal::mmdit::SD3Transformer2DConfig;
use ctcal::schedule::Schedule;
use ctcal::schedule::{DdpmConfig, FlowConfig};
use ctcal::unet::UNet2DConditionConfig;
use ctcal::weights::load_module;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

const DRAWS: usize = 3;
const TOL: f64 = 1e-4;

/// Loss parts of each draw for the UNet then the MMDiT, and the mean step time in ms.
fn run<B: AutodiffAttentionBackend>(device: &B::Device) -> Result<(Vec<LossParts>, f64)> {
    let data = Path::new("weights/tiny-data/metadata.jsonl");
    let dataset = CachedFeatures::open(data, BadRowPolicy::Fail)?;
    let samples = (0..2)
        .map(|i| dataset.load(i).map_err(|b| anyhow::anyhow!("{b}")))
        .collect::<Result<Vec<_>>>()?;
    let batch = Batch::collate(
        samples,
        0,
        DataCursor::start(0, dataset.len()),
        Default::default(),
    )?;
    let batch = batch.train_batch::<B>(device, &|_: &str| 1)?;

    let dir = Path::new("weights/tiny-sd21/unet");
    let config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json"))?;
    let (unet, _) = load_module(config.init::<B>(device), dir, None)?;
    let dir = Path::new("weights/tiny-sd3/transformer");
    let config = SD3Transformer2DConfig::from_diffusers_json(&dir.join("config.json"))?;
    let (mmdit, _) = load_module(config.init::<B>(device), dir, None)?;

    let ddpm = Schedule::Ddpm(DdpmConfig::sd21().init());
    let flow = Schedule::Flow(FlowConfig::sd3_medium().init());
    let mut parts = Vec::new();
    let start = Instant::now();
    parts.extend(steps(&unet, &batch, &ddpm, &CtcalConfig::sd21(), device)?);
    parts.extend(steps(&mmdit, &batch, &flow, &CtcalConfig::sd3(), device)?);
    let ms = start.elapsed().as_secs_f64() * 1e3 / (2 * DRAWS) as f64;
    Ok((parts, ms))
}

/// `DRAWS` CTCal steps (forward, loss, backward) with noise and levels drawn on the host.
fn steps<B, M>(
    model: &M,
    batch: &ctcal::calibration::TrainBatch<B>,
    schedule: &Schedule,
    config: &CtcalConfig,
    device: &B::Device,
) -> Result<Vec<LossParts>>
where
    B: AutodiffAttentionBackend,
    M: AutodiffModule<B> + Denoiser<B>,
    M::InnerModule: Denoiser<B::InnerBackend>,
{
    let ae = config.autoencoder.init::<B>(device);
    // Same auto-encoder weights on every backend: fill from a seeded host RNG.
    let ae = seeded(ae, 11, device);
    let shape = batch.latents.dims();
    (0..DRAWS)
        .map(|k| {
            let mut rng = StdRng::seed_from_u64(k as u64);
            let student = schedule.sample_levels(&mut rng, shape[0]);
            let teacher = config
                .teacher
                .teacher_levels(schedule, &student, &mut rng)?;
            let noise: Vec<f32> = (0..shape.iter().product())
                .map(|_| rng.sample(StandardNormal))
                .collect();
            let draw = StepDraw {
                noise: Tensor::from_data(TensorData::new(noise, shape), device),
                student,
                teacher,
            };
            let out = ctcal_step(model, &ae, batch, &draw, schedule, config)?;
            let _grads = out.loss.backward();
            Ok(out.parts)
        })
        .collect()
}

/// Re-initialises every parameter of `module` from a host RNG seeded with `seed` (uniform in
/// +-0.1), so all backends start from the same values.
fn seeded<B: Backend, M: burn::module::Module<B>>(module: M, seed: u64, device: &B::Device) -> M {
    struct Fill<'a, B: Backend>(StdRng, &'a B::Device);
    impl<B: Backend> burn::module::ModuleMapper<B> for Fill<'_, B> {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<B, D>>,
        ) -> burn::module::Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let shape = tensor.shape();
            let values: Vec<f32> = (0..shape.num_elements())
                .map(|_| self.0.random_range(-0.1..0.1))
                .collect();
            let fresh = Tensor::from_data(TensorData::new(values, shape), self.1)
                .set_require_grad(tensor.is_require_grad());
            burn::module::Param::from_mapped_value(id, fresh, mapper)
        }
    }
    module.map(&mut Fill::<B>(StdRng::seed_from_u64(seed), device))
}

fn main() -> Result<ExitCode> {
    let mut results: Vec<(&str, Vec<LossParts>, f64)> = Vec::new();
    #[cfg(feature = "ndarray")]
    {
        let (p, ms) = run::<Autodiff<burn::backend::NdArray<f32>>>(&Default::default())?;
        results.push(("ndarray", p, ms));
    }
    #[cfg(feature = "wgpu")]
    {
        let (p, ms) = run::<Autodiff<burn::backend::Wgpu<f32>>>(&Default::default())?;
        results.push(("wgpu", p, ms));
    }
    #[cfg(feature = "cuda-untuned")]
    {
        let (p, ms) = run::<Autodiff<burn::backend::Cuda<f32>>>(&Default::default())?;
        results.push(("cuda", p, ms));
    }
    #[cfg(feature = "tch")]
    {
        let (p, ms) = run::<Autodiff<burn::backend::LibTorch<f32>>>(&Default::default())?;
        results.push(("tch", p, ms));
    }
    let Some((ref_name, reference, _)) = results.first().cloned() else {
        anyhow::bail!("no backend compiled in: enable a feature (ndarray, wgpu, cuda, tch)");
    };
    println!(
        "{:<8} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "backend", "step", "total", "diffusion", "ctcal", "max rel", "ms/step"
    );
    let mut worst: f64 = 0.0;
    for (name, parts, ms) in &results {
        for (i, (p, r)) in parts.iter().zip(&reference).enumerate() {
            let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-8);
            let err = [
                rel(p.total, r.total),
                rel(p.diffusion, r.diffusion),
                rel(p.ctcal, r.ctcal),
                rel(p.pixel, r.pixel),
                rel(p.semantic, r.semantic),
                rel(p.recon, r.recon),
                rel(p.balance, r.balance),
            ]
            .into_iter()
            .fold(0.0, f64::max);
            worst = worst.max(err);
            let model = if i < DRAWS { "unet" } else { "mmdit" };
            println!(
                "{name:<8} {model:>5} {:>10.6} {:>10.6} {:>10.6} {:>10.1e} {:>10.1}",
                p.total, p.diffusion, p.ctcal, err, ms
            );
        }
    }
    if worst > TOL {
        eprintln!("loss parts disagree with {ref_name} by {worst:.2e} > {TOL:e}");
        return Ok(ExitCode::FAILURE);
    }
    println!("all backends agree with {ref_name} within {TOL:e} (worst {worst:.1e})");
    Ok(ExitCode::SUCCESS)
}
