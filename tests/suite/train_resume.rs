//! Training survives a crash: a run killed with SIGKILL after a checkpoint and resumed ends
//! with exactly the weights of an uninterrupted run (ndarray, bit for bit), and the metrics of
//! the lost step are replaced, not duplicated.
//!
//! The killed run is this test binary re-executed as a child (`child_training_run`, which is
//! `#[ignore]`d so it only runs when asked for), so the kill is a real SIGKILL of a process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use ctcal::calibration::CtcalConfig;
use ctcal::data::{BadRowPolicy, CachedFeatures};
use ctcal::lora::LoraConfig;
use ctcal::nouns::CountedTokens;
use ctcal::schedule::DdpmConfig;
use ctcal::schedule::Schedule;
use ctcal::train::{CachedInputs, Event, TrainConfig, Trained, Trainer};
use ctcal::unet::UNet2DConditionConfig;
use ctcal::weights::{TensorFile, load_module};

use crate::common::{Cpu, checkpoint_tensors, fixture, write_unet_sd2_data};

type A = Autodiff<Cpu>;

const STEPS: usize = 6;

/// Six captioned samples in the shapes of the `unet_sd2` fixture (latents 4x16x12, 7 tokens of
/// width 12), deterministic.
fn write_dataset(dir: &Path) -> PathBuf {
    write_unet_sd2_data(dir, 6, |_| "[[3], [6]]")
}

/// The cached dataset of the run in `out`, beside it (a fresh run needs an empty folder).
fn data_dir(out: &Path) -> PathBuf {
    let name = out.file_name().unwrap().to_string_lossy();
    out.with_file_name(format!("{name}-data"))
}

fn config() -> TrainConfig {
    TrainConfig::new(
        CtcalConfig::sd21()
            .with_layer_downscales(vec![1, 2])
            .with_map_downscale(2),
    )
    .with_steps(STEPS)
    .with_batch_size(2)
    .with_lr(1e-3)
    .with_warmup_steps(2)
    .with_checkpoint_every(2)
    .with_ema_decay(Some(0.9))
    .with_seed(7)
}

/// Fully fine-tunes the tiny SD 2 UNet into `out`; `on_step` sees each step.
fn run(out: &Path, resume: bool, on_step: impl FnMut(&ctcal::train::StepLog)) {
    run_with(out, resume, config(), Trained::Full, on_step).unwrap();
}

/// Trains the tiny SD 2 UNet (LoRA adapters on the default projections for `Trained::Lora`).
fn run_with(
    out: &Path,
    resume: bool,
    config: TrainConfig,
    trained: Trained,
    mut on_step: impl FnMut(&ctcal::train::StepLog),
) -> ctcal::Result<()> {
    let device = Default::default();
    let dir = fixture("unet_sd2/unet");
    let unet_config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let (unet, _) = load_module(unet_config.init::<A>(&device), &dir, None).unwrap();
    let data = data_dir(out);
    let meta = if data.exists() {
        data.join("metadata.jsonl")
    } else {
        write_dataset(&data)
    };
    let dataset = Arc::new(CachedFeatures::open(&meta, BadRowPolicy::Fail).unwrap());
    let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
    let mut trainer = Trainer::new(config)
        .output_dir(out)
        .resume(resume)
        .map_previews(false)
        .listen(|event| {
            if let Event::Step(log) = event {
                on_step(log)
            }
        });
    if trained == Trained::Lora {
        trainer = trainer.lora(LoraConfig::unet_default().with_rank(2));
    }
    let inputs = CachedInputs(CountedTokens(|_: &str| 1));
    trainer.fit(unet, &inputs, dataset, &schedule, &device)?;
    Ok(())
}

/// The child process: trains, and after step 5 (checkpoint at 4 written, step 5 logged but not
/// checkpointed) waits to be killed.
#[test]
#[ignore = "run by train_resume::killed_run_resumes_bit_identically as a child process"]
fn child_training_run() {
    let Ok(out) = std::env::var("CTCAL_CHILD_OUT") else {
        return;
    };
    if std::env::var("CTCAL_CHILD_MODE").as_deref() == Ok("kill-points") {
        run_with(Path::new(&out), true, kill_config(), Trained::Full, |_| {}).unwrap();
        return;
    }
    run(Path::new(&out), false, |log| {
        if log.step == 5 {
            std::thread::sleep(Duration::from_secs(600));
        }
    });
}

/// This test binary re-executed as `child_training_run` training into `out`, in `mode`
/// (`stop-at-5`: a fresh run that waits after step 5; `kill-points`: resumes and finishes).
fn spawn_child(out: &Path, mode: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "train_resume::child_training_run",
            "--ignored",
            "--nocapture",
        ])
        .env("CTCAL_CHILD_OUT", out)
        .env("CTCAL_CHILD_MODE", mode)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn final_tensors(out: &Path) -> Vec<(String, Vec<f32>)> {
    checkpoint_tensors(
        out,
        STEPS,
        &[
            "trained.safetensors",
            "autoencoder.safetensors",
            "ema.safetensors",
        ],
    )
}

/// `metrics.jsonl` of `out` without each line's `wall_time` and `step_time` (which differ
/// between runs of the same steps); checks that every line has them, a time after this code
/// was written and a positive duration.
fn metrics_without_times(out: &Path) -> String {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let mut kept = String::new();
    for line in text.lines() {
        let mut row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).unwrap();
        let wall = row.remove("wall_time").and_then(|v| v.as_f64()).unwrap();
        let step = row.remove("step_time").and_then(|v| v.as_f64()).unwrap();
        assert!(wall > 1.79e9 && step > 0.0 && step < 600.0, "{line}");
        kept += &serde_json::to_string(&row).unwrap();
        kept.push('\n');
    }
    kept
}

fn metric_steps(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn killed_run_resumes_bit_identically() {
    let base = std::env::temp_dir().join(format!("ctcal-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (killed, clean) = (base.join("killed"), base.join("clean"));

    // 1. A child trains until step 5, then is SIGKILLed.
    let mut child = spawn_child(&killed, "stop-at-5");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !killed.join("metrics.jsonl").exists() || metric_steps(&killed).last() != Some(&5) {
        assert!(Instant::now() < deadline, "child did not reach step 5");
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let latest = std::fs::read_to_string(killed.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-0000004");

    // 2. Resume it; 3. run the same training uninterrupted.
    run(&killed, true, |_| {});
    run(&clean, false, |_| {});

    assert_eq!(
        metric_steps(&killed),
        (1..=STEPS as u64).collect::<Vec<_>>()
    );
    let (a, b) = (final_tensors(&killed), final_tensors(&clean));
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 100, "{} tensors", a.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(va == vb, "{ka} differs after resuming");
    }
    // Training moved the weights (the comparison is not between two untouched models).
    let start = TensorFile::read(&fixture(
        "unet_sd2/unet/diffusion_pytorch_model.safetensors",
    ))
    .unwrap();
    let moved = start.tensors["conv_in.weight"]
        .1
        .iter()
        .zip(
            &a.iter()
                .find(|(k, _)| k.ends_with("conv_in.weight"))
                .unwrap()
                .1,
        )
        .any(|(x, y)| x != y);
    assert!(moved, "conv_in did not change");
    let _ = std::fs::remove_dir_all(&base);
}

/// LoRA training extended in a second run: 3 steps, then `--resume` with `steps = 6`, ends
/// where one 6-step run ends (only adapters are checkpointed and restored); the base weights
/// never move.
#[test]
fn lora_run_extends_bit_identically() {
    let base = std::env::temp_dir().join(format!("ctcal-lora-extend-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (split, whole) = (base.join("split"), base.join("whole"));
    let lora = |steps| config().with_steps(steps).with_checkpoint_every(0);
    run_with(&split, false, lora(3), Trained::Lora, |_| {}).unwrap();
    run_with(&split, true, lora(STEPS), Trained::Lora, |_| {}).unwrap();
    run_with(&whole, false, lora(STEPS), Trained::Lora, |_| {}).unwrap();
    let (a, b) = (final_tensors(&split), final_tensors(&whole));
    let adapters = a.iter().filter(|(k, _)| k.starts_with("trained")).count();
    assert_eq!(
        adapters,
        2 * 96,
        "trained.safetensors holds the 96 adapters' A and B"
    );
    assert_eq!(a, b, "the extended run differs from the single run");
    // The loss plot covers the whole run after the resume, not only the resumed steps.
    let plot = |dir: &Path| std::fs::read(dir.join("loss.png")).unwrap();
    assert!(plot(&split) == plot(&whole), "loss.png differs");
    // A resumed run with another seed is refused, naming the field.
    let err = run_with(
        &split,
        true,
        lora(STEPS + 1).with_seed(8),
        Trained::Lora,
        |_| {},
    );
    assert!(err.unwrap_err().to_string().contains("seed"));
    let _ = std::fs::remove_dir_all(&base);
}

/// A non-finite loss stops training with a message naming the step, before any update.
#[test]
fn non_finite_loss_stops_the_run() {
    let out = std::env::temp_dir().join(format!("ctcal-nan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let data = data_dir(&out);
    let _ = std::fs::remove_dir_all(&data);
    write_dataset(&data);
    // Poison every sample's latents.
    for i in 0..6 {
        let path = data.join(format!("{i}.safetensors"));
        let mut file = TensorFile::read(&path).unwrap();
        file.tensors.get_mut("latents").unwrap().1[5] = f32::NAN;
        ctcal::weights::write_tensor_file(&path, &file.tensors, None).unwrap();
    }
    let err = run_with(&out, false, config(), Trained::Full, |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("step 1") && msg.contains("NaN"), "{msg}");
    assert!(!out.join("checkpoints/latest").exists());
    assert!(msg.contains("no checkpoint was written yet"), "{msg}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&data);
}

/// A run stopped after a step's `metrics.jsonl` line but before its checkpoint (the kill-point
/// test met the other order: a checkpoint without its line, whose line was then lost for good)
/// resumes from the checkpoint before, runs the step again and ends with the same lines.
#[test]
fn a_step_logged_but_not_checkpointed_is_run_again() {
    let base = std::env::temp_dir().join(format!("ctcal-log-order-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let out = base.join("run");
    let every_step = || config().with_steps(3).with_checkpoint_every(1);
    run_with(&out, false, every_step(), Trained::Lora, |_| {}).unwrap();
    let whole = metrics_without_times(&out);
    assert_eq!(whole.lines().count(), 3);
    // As if killed between step 3's line and its checkpoint.
    let root = out.join("checkpoints");
    std::fs::remove_dir_all(root.join("step-0000003")).unwrap();
    std::fs::write(root.join("latest"), "step-0000002").unwrap();
    let mut ran = Vec::new();
    run_with(&out, true, every_step(), Trained::Lora, |log| {
        ran.push(log.step)
    })
    .unwrap();
    assert_eq!(ran, [3]);
    assert_eq!(metrics_without_times(&out), whole);
    let _ = std::fs::remove_dir_all(&base);
}

/// The output folder as accelerate treats it: a second fresh run into a used folder is refused
/// before any work and leaves the folder as it was; `overwrite` clears it and runs; `resume`
/// continues a finished run to more steps.
#[test]
fn a_used_output_folder_needs_resume_or_overwrite() {
    let base = std::env::temp_dir().join(format!("ctcal-outdir-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let out = base.join("run");
    let lora = |steps| config().with_steps(steps).with_checkpoint_every(0);
    run_with(&out, false, lora(2), Trained::Lora, |_| {}).unwrap();
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let before_untimed = metrics_without_times(&out);
    let written = [
        "checkpoints/step-0000002/trained.safetensors",
        "checkpoints/step-0000002/autoencoder.safetensors",
        "autoencoder.safetensors",
        "pytorch_lora_weights.safetensors",
    ];
    let bytes = |out: &Path| written.map(|f| std::fs::read(out.join(f)).unwrap());
    let first = bytes(&out);
    let mut stepped = 0;
    let err = run_with(&out, false, lora(2), Trained::Lora, |_| stepped += 1).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&out.display().to_string()), "{msg}");
    assert!(
        msg.contains("--resume") && msg.contains("--overwrite"),
        "{msg}"
    );
    assert_eq!(stepped, 0);
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);
    // A stray file of another run goes with --overwrite.
    std::fs::write(out.join("stray.txt"), "old").unwrap();
    let device = Default::default();
    let dir = fixture("unet_sd2/unet");
    let unet_config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let (unet, _) = load_module(unet_config.init::<A>(&device), &dir, None).unwrap();
    let dataset = Arc::new(
        CachedFeatures::open(&data_dir(&out).join("metadata.jsonl"), BadRowPolicy::Fail).unwrap(),
    );
    let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
    let inputs = CachedInputs(CountedTokens(|_: &str| 1));
    Trainer::new(lora(2))
        .output_dir(&out)
        .overwrite(true)
        .map_previews(false)
        .lora(LoraConfig::unet_default().with_rank(2))
        .fit(unet, &inputs, dataset, &schedule, &device)
        .unwrap();
    assert!(!out.join("stray.txt").exists());
    // The same run writes the same bytes (checkpoint, exports, metrics but their times).
    assert_eq!(metrics_without_times(&out), before_untimed);
    assert!(bytes(&out) == first, "a file of the same run differs");
    // Resuming the finished run to 3 steps runs one step.
    let mut steps = Vec::new();
    run_with(&out, true, lora(3), Trained::Lora, |log| {
        steps.push(log.step)
    })
    .unwrap();
    assert_eq!(steps, vec![3]);
    assert_eq!(metric_steps(&out), vec![1, 2, 3]);
    let _ = std::fs::remove_dir_all(&base);
}

/// bf16 compute on ndarray (which has no bf16) is refused before anything is written.
#[test]
fn mixed_precision_on_ndarray_is_refused() {
    let out = std::env::temp_dir().join(format!("ctcal-mixed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let config = config().with_mixed_precision(ctcal::precision::MixedPrecision::Bf16);
    let err = run_with(&out, false, config, Trained::Full, |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Bf16") && msg.contains("ndarray"), "{msg}");
    assert!(!out.join("checkpoints").exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// The run the kill-point test interrupts: a checkpoint after every step, so kills land in
/// checkpoint writes as often as in steps.
fn kill_config() -> TrainConfig {
    config().with_steps(12).with_checkpoint_every(1)
}

/// Every file of a finished run's output folder (its data folder is beside it), by relative
/// path; `metrics.jsonl` without its times and with the folder's own path taken out of the
/// checkpoint entries.
fn output_files(out: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = std::collections::BTreeMap::new();
    walk(out, out, &mut files);
    let metrics = files.get_mut("metrics.jsonl").unwrap();
    *metrics = metrics_without_times(out)
        .replace(&out.display().to_string(), "<out>")
        .into_bytes();
    files
}

/// A run SIGKILLed at 10 random moments (mid-step, mid-checkpoint, during start-up), each
/// time resumed, ends with exactly the files of an uninterrupted run, byte for byte:
/// checkpoints (weights, optimiser states, state.json), exports, metrics and plot. A resume
/// onto data changed under the run is then refused, saying what changed.
#[test]
fn killed_at_ten_random_moments_the_run_ends_byte_identical() {
    use rand::{Rng, SeedableRng};
    let base = std::env::temp_dir().join(format!("ctcal-kill-points-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (killed, clean) = (base.join("killed"), base.join("clean"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let last_step = |out: &Path| {
        let path = out.join("metrics.jsonl");
        if path.exists() {
            metric_steps(out).last().copied().unwrap_or(0)
        } else {
            0
        }
    };
    let mut kills = Vec::new();
    while kills.len() < 10 {
        let mut child = spawn_child(&killed, "kill-points");
        // Wait for a new step now and then (else a kill during start-up), then a random
        // moment inside the next step or checkpoint.
        let before = last_step(&killed);
        let deadline = Instant::now() + Duration::from_secs(300);
        if rng.random_bool(0.8) {
            while last_step(&killed) <= before && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "the child made no progress");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        if child.try_wait().unwrap().is_some() {
            break; // finished before its kill
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills.push(last_step(&killed));
    }
    println!("killed after steps {kills:?}");
    assert!(
        kills.len() >= 6,
        "only {} kills landed: {kills:?}",
        kills.len()
    );
    run_with(&killed, true, kill_config(), Trained::Full, |_| {}).unwrap();
    run_with(&clean, false, kill_config(), Trained::Full, |_| {}).unwrap();

    let (a, b) = (output_files(&killed), output_files(&clean));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "no temporary or extra file is left"
    );
    assert!(a.contains_key("checkpoints/step-0000012/optimizer.mpk"));
    for (name, bytes) in &a {
        assert!(
            bytes == &b[name],
            "{name} differs from the uninterrupted run's"
        );
    }

    // The data changed under the run: one caption edited.
    let meta = data_dir(&killed).join("metadata.jsonl");
    let rows = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, rows.replacen("blue ball", "green ball", 1)).unwrap();
    let err = run_with(
        &killed,
        true,
        kill_config().with_steps(13),
        Trained::Full,
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("training data changed") && err.contains("caption"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&base);
}
