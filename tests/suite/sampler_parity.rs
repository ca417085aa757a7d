//! Inference samplers against diffusers' `DDIMScheduler` and `FlowMatchEulerDiscreteScheduler`
//! (scripts/fixtures_samplers.py): timesteps exactly, sigmas and 10-step trajectories of a fake
//! model `0.5 x + 0.5 r_i` within 1e-5 relative; guidance; config files.

use burn::tensor::{Tensor, TensorData};
use ctcal::schedule::{
    DdimConfig, FlowEulerConfig, PredictionType, Sampler, TimestepSpacing, cfg, rescale_noise_cfg,
};
use ctcal::weights::TensorFile;

use crate::common::{Cpu, fixture, rel_err, values};

const STEPS: usize = 10;

fn file() -> TensorFile {
    TensorFile::read(&fixture("samplers/samplers.safetensors")).unwrap()
}

fn get(f: &TensorFile, k: &str) -> Vec<f32> {
    f.tensors[k].1.clone()
}

/// The sample-shaped slice `i` of a stacked `[steps, 1, 4, 4, 4]` tensor.
fn slice(all: &[f32], i: usize) -> Tensor<Cpu, 4> {
    let v = all[i * 64..(i + 1) * 64].to_vec();
    Tensor::from_data(TensorData::new(v, [1, 4, 4, 4]), &Default::default())
}

fn fake_model(x: &Tensor<Cpu, 4>, r: Tensor<Cpu, 4>) -> Tensor<Cpu, 4> {
    x.clone().mul_scalar(0.5) + r.mul_scalar(0.5)
}

fn ddim_config(pred: &str, spacing: &str) -> DdimConfig {
    let c = match pred {
        "epsilon" => DdimConfig::sd21_base(),
        _ => DdimConfig::sd21(),
    };
    c.with_timestep_spacing(match spacing {
        "leading" => TimestepSpacing::Leading,
        _ => TimestepSpacing::Trailing,
    })
}

#[test]
fn ddim_timesteps_equal_diffusers() {
    let f = file();
    for pred in ["epsilon", "v_prediction"] {
        for spacing in ["leading", "trailing"] {
            let mut s = ddim_config(pred, spacing).init().unwrap();
            for n in [10, 20, 50] {
                let want: Vec<usize> = get(&f, &format!("ddim_{pred}_{spacing}_{n}_timesteps"))
                    .iter()
                    .map(|&t| t as usize)
                    .collect();
                assert_eq!(s.set_timesteps(n).unwrap(), want, "{pred} {spacing} {n}");
            }
        }
    }
}

/// Every spacing at step counts that do not divide 1000 (numpy's float `arange` / `linspace`
/// and half-to-even rounding).
#[test]
fn ddim_spacings_equal_diffusers_at_odd_step_counts() {
    let f = file();
    for (name, spacing) in [
        ("leading", TimestepSpacing::Leading),
        ("trailing", TimestepSpacing::Trailing),
        ("linspace", TimestepSpacing::Linspace),
    ] {
        let mut s = DdimConfig::sd21()
            .with_timestep_spacing(spacing)
            .init()
            .unwrap();
        for n in [3, 7, 33, 999] {
            let want: Vec<usize> = get(&f, &format!("ddim_{name}_n{n}_timesteps"))
                .iter()
                .map(|&t| t as usize)
                .collect();
            assert_eq!(s.set_timesteps(n).unwrap(), want, "{name} {n}");
        }
    }
    let mut s = DdimConfig::sd21().init().unwrap();
    let err = s.set_timesteps(1000).unwrap_err().to_string();
    assert!(err.contains("timestep 1000 (steps_offset = 1)"), "{err}");
    assert!(s.set_timesteps(0).is_err() && s.set_timesteps(1001).is_err());
}

#[test]
fn ddim_trajectories_match_diffusers() {
    let f = file();
    let noise = get(&f, "model_noise");
    let mut cases: Vec<(String, DdimConfig)> = Vec::new();
    for pred in ["epsilon", "v_prediction"] {
        for spacing in ["leading", "trailing"] {
            cases.push((format!("ddim_{pred}_{spacing}"), ddim_config(pred, spacing)));
        }
    }
    let zsnr = DdimConfig::sd21()
        .with_timestep_spacing(TimestepSpacing::Trailing)
        .with_rescale_betas_zero_snr(true);
    cases.push(("ddim_zsnr".into(), zsnr));
    let clip = DdimConfig::sd21_base().with_clip_sample(true);
    cases.push(("ddim_clip".into(), clip));
    for (key, config) in cases {
        let mut s = config.init().unwrap();
        s.set_timesteps(STEPS).unwrap();
        let mut x = f.tensor::<Cpu, 4>("x_init", &Default::default()).unwrap();
        let (mut xs, mut x0s) = (Vec::new(), Vec::new());
        for (i, &t) in s.timesteps().to_vec().iter().enumerate() {
            let out = s.step(fake_model(&x, slice(&noise, i)), t, x).unwrap();
            x = out.prev_sample;
            xs.extend(values(x.clone()));
            x0s.extend(values(out.pred_original_sample));
        }
        let (e, e0) = (
            rel_err(&xs, &get(&f, &format!("{key}_traj"))),
            rel_err(&x0s, &get(&f, &format!("{key}_x0"))),
        );
        println!("{key}: trajectory {e:.2e}, x0 {e0:.2e}");
        assert!(e < 1e-5 && e0 < 1e-5, "{key}: {e} {e0}");
    }
}

/// The same trajectory through the `Sampler` trait, for both schedulers.
fn run_sampler<S: Sampler>(s: &mut S, f: &TensorFile) -> Vec<f32> {
    let noise = get(f, "model_noise");
    s.set_timesteps(STEPS).unwrap();
    let x_init = f.tensor::<Cpu, 4>("x_init", &Default::default()).unwrap();
    let mut x = x_init.mul_scalar(s.init_noise_sigma());
    let mut xs = Vec::new();
    for (i, _t) in s.model_timesteps().into_iter().enumerate() {
        x = s.step(fake_model(&x, slice(&noise, i)), i, x).unwrap();
        xs.extend(values(x.clone()));
    }
    assert!(s.step(x.clone(), STEPS, x).is_err(), "a step past the last");
    xs
}

#[test]
fn flow_euler_matches_diffusers() {
    let f = file();
    for shift in [1, 3] {
        let mut s = FlowEulerConfig::new()
            .with_shift(shift as f64)
            .init()
            .unwrap();
        let t: Vec<f32> = s
            .set_timesteps(28)
            .unwrap()
            .iter()
            .map(|&t| t as f32)
            .collect();
        assert_eq!(
            t,
            get(&f, &format!("flow_s{shift}_28_timesteps")),
            "shift {shift}"
        );
        let sigmas: Vec<f32> = s.sigmas().iter().map(|&v| v as f32).collect();
        let e_sig = rel_err(&sigmas, &get(&f, &format!("flow_s{shift}_28_sigmas")));
        let xs = run_sampler(&mut s, &f);
        let e = rel_err(&xs, &get(&f, &format!("flow_s{shift}_traj")));
        println!("flow shift {shift}: sigmas {e_sig:.2e}, trajectory {e:.2e}");
        assert!(e_sig < 1e-5 && e < 1e-5, "shift {shift}: {e_sig} {e}");
    }
    let sd3 = FlowEulerConfig::sd3_medium();
    assert_eq!((sd3.shift, sd3.num_train_timesteps), (3.0, 1000));
}

#[test]
fn ddim_sampler_trait_matches_diffusers() {
    let f = file();
    let mut s = DdimConfig::sd21().init().unwrap();
    let xs = run_sampler(&mut s, &f);
    let e = rel_err(&xs, &get(&f, "ddim_v_prediction_leading_traj"));
    assert!(e < 1e-5, "{e}");
}

#[test]
fn guidance_matches_diffusers() {
    let f = file();
    let d = Default::default();
    let uncond = f.tensor::<Cpu, 4>("cfg_uncond", &d).unwrap();
    let cond = f.tensor::<Cpu, 4>("cfg_cond", &d).unwrap();
    let guided = cfg(uncond, cond.clone(), 7.5);
    let e = rel_err(&values(guided.clone()), &get(&f, "cfg_guided"));
    let rescaled = rescale_noise_cfg(guided, cond, 0.7);
    let e_r = rel_err(&values(rescaled), &get(&f, "cfg_rescaled"));
    println!("cfg {e:.2e}, rescale_noise_cfg {e_r:.2e}");
    assert!(e < 1e-5 && e_r < 1e-5, "{e} {e_r}");
}

fn write(tag: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ctcal-sampler-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scheduler_config.json");
    std::fs::write(&path, text).unwrap();
    path
}

/// The published SD 2.1 / 2.1-base / SD 3 medium files read as the presets; bad values are
/// errors naming the field.
#[test]
fn scheduler_json_reads_presets_and_names_bad_fields() {
    let sd21 = r#"{"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0",
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": false, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
        "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
        "trained_betas": null}"#;
    let c = DdimConfig::from_diffusers_json(&write("sd21", sd21)).unwrap();
    assert_eq!(c, DdimConfig::sd21());
    let base = sd21
        .replace("DDIMScheduler", "PNDMScheduler")
        .replace("v_prediction", "epsilon");
    let c = DdimConfig::from_diffusers_json(&write("base", &base)).unwrap();
    assert_eq!(c, DdimConfig::sd21_base());
    assert_eq!(c.prediction_type, PredictionType::Epsilon);
    let sd3 = r#"{"_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.29.0.dev0", "num_train_timesteps": 1000, "shift": 3.0}"#;
    let c = FlowEulerConfig::from_diffusers_json(&write("sd3", sd3)).unwrap();
    assert_eq!(c, FlowEulerConfig::sd3_medium());

    let ddim_err = |tag: &str, text: String| {
        DdimConfig::from_diffusers_json(&write(tag, &text))
            .unwrap_err()
            .to_string()
    };
    for (tag, from, to, field) in [
        ("pred", "\"v_prediction\"", "\"x0\"", "`prediction_type`"),
        (
            "offset",
            "\"steps_offset\": 1",
            "\"steps_offset\": \"one\"",
            "`steps_offset`",
        ),
        ("betas", "null}", "[0.1, 0.2]}", "`trained_betas`"),
        (
            "class",
            "DDIMScheduler",
            "LMSDiscreteScheduler",
            "`_class_name`",
        ),
        (
            "sched",
            "scaled_linear",
            "squaredcos_cap_v2",
            "`beta_schedule`",
        ),
        (
            "thresh",
            "\"clip_sample\"",
            "\"thresholding\": true, \"clip_sample\"",
            "`thresholding`",
        ),
    ] {
        let err = ddim_err(tag, sd21.replace(from, to));
        assert!(
            err.contains(field) && err.contains("scheduler_config.json"),
            "{err}"
        );
    }
    let err = ddim_err("beta", sd21.replace("0.012", "1.5"));
    assert!(err.contains("beta_end = 1.5"), "{err}");
    let bad = sd3.replace("\"shift\"", "\"use_dynamic_shifting\": true, \"shift\"");
    let err = FlowEulerConfig::from_diffusers_json(&write("dyn", &bad))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`use_dynamic_shifting`"), "{err}");
}
