//! Schedules against diffusers' `DDPMScheduler` and `FlowMatchEulerDiscreteScheduler`.

use ctcal::schedule::{DdpmConfig, FlowConfig};
use ctcal::weights::TensorFile;

use crate::common::{Cpu, fixture, rel_err, values};

#[test]
fn ddpm_and_flow_match_diffusers() {
    let device = Default::default();
    let f = TensorFile::read(&fixture("schedules/schedules.safetensors")).unwrap();
    let get = |k: &str| f.tensors[k].1.clone();
    let x0 = f.tensor::<Cpu, 4>("x0", &device).unwrap();
    let noise = f.tensor::<Cpu, 4>("noise", &device).unwrap();
    let t: Vec<usize> = get("timesteps").iter().map(|&v| v as usize).collect();

    let ddpm = DdpmConfig::sd21().init();
    let ours: Vec<f32> = ddpm.alphas_cumprod.iter().map(|&a| a as f32).collect();
    assert!(rel_err(&ours, &get("alphas_cumprod")) < 1e-6);
    let noisy = ddpm.add_noise(x0.clone(), noise.clone(), &t).unwrap();
    assert!(rel_err(&values(noisy), &get("ddpm_noisy")) < 1e-5);
    let v = ddpm.target(x0.clone(), noise.clone(), &t).unwrap();
    assert!(rel_err(&values(v), &get("ddpm_v")) < 1e-5);

    let flow = FlowConfig::sd3_medium().init();
    let shifted: Vec<f32> = get("flow_unshifted")
        .iter()
        .map(|&s| flow.shift(s as f64) as f32)
        .collect();
    assert!(rel_err(&shifted, &get("flow_sigmas")) < 1e-6);
    let sigmas: Vec<f64> = get("flow_sigma_picks").iter().map(|&s| s as f64).collect();
    let noisy = flow.add_noise(x0, noise, &sigmas).unwrap();
    assert!(rel_err(&values(noisy), &get("flow_noisy")) < 1e-5);
}
