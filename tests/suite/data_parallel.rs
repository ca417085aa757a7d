//! Data-parallel training (burn-collective, CPU peers): `W` peers with batch `b` each train
//! exactly as one device with batch `W * b` over the same samples and noise (losses and
//! weights within 1e-5), with gradient accumulation too; a SIGKILLed two-peer run resumes to
//! the uninterrupted run's weights; two processes of two peers each, joined over the loopback
//! address through burn-collective's orchestrator, train as one device (ignored: blocked by
//! a burn-collective 0.21.0 bug, see the test).
//!
//! Children are this test binary re-executed (`data_parallel::child`, `#[ignore]`d).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use ctcal::calibration::{CtcalConfig, TrainBatch};
use ctcal::data::{BadRowPolicy, Batch, CachedFeatures, Loader, LoaderConfig};
use ctcal::lora::LoraConfig;
use ctcal::nouns::CountedTokens;
use ctcal::schedule::{DdpmConfig, Schedule};
use ctcal::train::{CachedInputs, DataParallel, Event, StepLog, TrainConfig, TrainInputs, Trainer};
use ctcal::unet::UNet2DConditionConfig;
use ctcal::weights::{TensorFile, load_module};

use crate::common::{Cpu, checkpoint_tensors, fixture, rel_err, write_unet_sd2_data};

type A = Autodiff<Cpu>;

/// Twelve samples in the shapes of the `unet_sd2` fixture; every third has no nouns, so a
/// peer's shard sometimes has none (its auto-encoder takes no gradient there).
fn write_dataset(dir: &Path) -> PathBuf {
    write_unet_sd2_data(dir, 12, |i| match i % 3 {
        0 => "[]",
        1 => "[[3], [6]]",
        _ => "[[2]]",
    })
}

fn config(steps: usize, batch: usize, accum: usize) -> TrainConfig {
    TrainConfig::new(
        CtcalConfig::sd21()
            .with_layer_downscales(vec![1, 2])
            .with_map_downscale(2),
    )
    .with_steps(steps)
    .with_batch_size(batch)
    .with_grad_accum(accum)
    .with_lr(1e-3)
    .with_warmup_steps(2)
    .with_checkpoint_every(2)
    .with_ema_decay(Some(0.9))
    // AdamW's default epsilon (1e-8) turns a gradient entry of ~1e-7 into a step of about
    // `lr`; such entries are sums that nearly cancel, so f32 rounding (another summation
    // order for another batch shape) moves them by a few percent and single weights by
    // ~1e-3 relative. With 1e-4 the update follows the gradient smoothly and the runs'
    // agreement is that of their gradients.
    .with_adam_epsilon(1e-4)
    .with_seed(11)
}

/// Cached inputs that fail on the batch holding dataset sample `index` (`usize::MAX`: never).
struct FailOn<I>(I, usize);

impl<B: AutodiffBackend, M: AutodiffModule<B>, I: TrainInputs<B, M>> TrainInputs<B, M>
    for FailOn<I>
{
    fn train_batch(
        &self,
        model: &M,
        batch: &Batch,
        config: &TrainConfig,
        device: &B::Device,
    ) -> ctcal::Result<TrainBatch<B>> {
        if batch.indices.contains(&self.1) {
            return Err(ctcal::Error::Input(format!(
                "sample {} is poisoned",
                self.1
            )));
        }
        self.0.train_batch(model, batch, config, device)
    }

    fn render(
        &self,
        model: &M::InnerModule,
        prompts: &[&str],
        steps: usize,
        seed: u64,
    ) -> ctcal::Result<Tensor<B::InnerBackend, 4>> {
        self.0.render(model, prompts, steps, seed)
    }
}

/// LoRA-trains the tiny SD 2 UNet into `out` on `devices` CPU peers (one: `fit`), as node
/// `parallel.node_rank` of `parallel`; returns the step logs.
fn train(
    out: &Path,
    data: &Path,
    config: TrainConfig,
    devices: usize,
    parallel: DataParallel,
    resume: bool,
    on_step: impl FnMut(&StepLog),
) -> ctcal::Result<Vec<StepLog>> {
    train_failing(
        out,
        data,
        config,
        devices,
        parallel,
        resume,
        on_step,
        usize::MAX,
    )
}

/// [`train`] with inputs that fail on the batch holding sample `fail_on`.
#[allow(clippy::too_many_arguments)]
fn train_failing(
    out: &Path,
    data: &Path,
    config: TrainConfig,
    devices: usize,
    parallel: DataParallel,
    resume: bool,
    mut on_step: impl FnMut(&StepLog),
    fail_on: usize,
) -> ctcal::Result<Vec<StepLog>> {
    let device = Default::default();
    let dir = fixture("unet_sd2/unet");
    let unet_config = UNet2DConditionConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let (unet, _) = load_module(unet_config.init::<A>(&device), &dir, None).unwrap();
    let meta = data.join("metadata.jsonl");
    if !meta.exists() {
        write_dataset(data);
    }
    let dataset = Arc::new(CachedFeatures::open(&meta, BadRowPolicy::Fail).unwrap());
    let schedule = Schedule::Ddpm(DdpmConfig::sd21().init());
    let trainer = Trainer::new(config)
        .output_dir(out)
        .resume(resume)
        .map_previews(false)
        .lora(LoraConfig::unet_default().with_rank(2))
        .data_parallel(parallel)
        .listen(|event| {
            if let Event::Step(log) = event {
                on_step(log)
            }
        });
    let inputs = FailOn(CachedInputs(CountedTokens(|_: &str| 1)), fail_on);
    let fitted = match devices {
        1 => trainer.fit(unet, &inputs, dataset, &schedule, &device)?,
        n => trainer.fit_parallel(unet, &[&inputs], &vec![device; n], dataset, &schedule)?,
    };
    Ok(fitted.logs)
}

/// The run's final adapters and auto-encoder (in the last checkpoint), or its EMA.
fn final_tensors(out: &Path, steps: usize) -> Vec<(String, Vec<f32>)> {
    checkpoint_tensors(
        out,
        steps,
        &["trained.safetensors", "autoencoder.safetensors"],
    )
}

fn final_ema(out: &Path, steps: usize) -> Vec<(String, Vec<f32>)> {
    checkpoint_tensors(out, steps, &["ema.safetensors"])
}

/// Each step's losses from `metrics.jsonl`: total, diffusion, ctcal, pixel, semantic,
/// recon, balance, and the gradient norm.
fn metric_losses(out: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let loss = &row["loss"];
            let mut v: Vec<f64> = [
                "total",
                "diffusion",
                "ctcal",
                "pixel",
                "semantic",
                "recon",
                "balance",
            ]
            .iter()
            .map(|k| loss[k].as_f64().unwrap())
            .collect();
            v.push(row["grad_norm"].as_f64().unwrap());
            v
        })
        .collect()
}

/// `max |a - b| / max |b|` over every value of two runs' tensors.
fn assert_close(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], tol: f32) {
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 100, "{} tensors", a.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        let err = rel_err(va, vb);
        assert!(err <= tol, "{ka}: relative difference {err}");
    }
}

/// Each step's numbers within `tol`, relative to the value, except the balance term's: it is
/// `1 - tau - peak_i / peak_max` (in `[0, 0.95]`), a difference of numbers of order one that f32
/// rounds at that order, so a small value of it is compared relative to its range, 1. The pixel
/// and semantic terms are means of squared differences of maps of order 0.1: near zero (the
/// semantic term is about 6e-6 here) they carry the maps' f32 rounding, which the products'
/// summation order (a batch of 4 against two of 2) changes, so they are compared relative to
/// at least 1e-4.
fn assert_losses_close(a: &Path, b: &Path, tol: f64) {
    const PIXEL: usize = 3;
    const SEMANTIC: usize = 4;
    const BALANCE: usize = 6;
    let (la, lb) = (metric_losses(a), metric_losses(b));
    assert_eq!(la.len(), lb.len());
    for (step, (x, y)) in la.iter().zip(&lb).enumerate() {
        for (k, (u, v)) in x.iter().zip(y).enumerate() {
            let scale = match k {
                BALANCE => 1.0,
                PIXEL | SEMANTIC => v.abs().max(1e-4),
                _ => v.abs().max(1e-12),
            };
            let err = (u - v).abs() / scale;
            assert!(err <= tol, "step {}: {x:?} vs {y:?}", step + 1);
        }
    }
    // The CTCal terms took part (every other batch has nouns).
    assert!(lb.iter().all(|l| l[2] > 0.0), "{lb:?}");
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ctcal-ddp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn two_peers_train_as_one_device_with_both_batches() {
    let base = temp("equiv");
    let data = base.join("data");
    for accum in [1, 2] {
        let (one, two) = (
            base.join(format!("one-{accum}")),
            base.join(format!("two-{accum}")),
        );
        let single = train(
            &one,
            &data,
            config(10, 4, accum),
            1,
            DataParallel::default(),
            false,
            |_| {},
        );
        single.unwrap();
        let logs = train(
            &two,
            &data,
            config(10, 2, accum),
            2,
            DataParallel::default(),
            false,
            |_| {},
        )
        .unwrap();
        assert_eq!(logs.len(), 10, "peer 0 reports every step");
        assert_losses_close(&two, &one, 1e-5);
        // The ndarray kernels' matrix products (gemm) block by the row count, so a batch of 4
        // and two of 2 sum in different orders; AdamW's normalised steps turn the rounding of
        // near-zero gradient entries into weight differences of about 1e-5 after 10 steps. A
        // wrong reduction (a sum for a mean, a peer's gradient missing) moves the losses by
        // over 1e-3 (the control below).
        assert_close(&final_tensors(&two, 10), &final_tensors(&one, 10), 3e-5);
        // The EMA (kept by peer 0) lags the adapters, which start at zero: its entries are
        // smaller, the same absolute differences a little larger relative to them.
        assert_close(&final_ema(&two, 10), &final_ema(&one, 10), 6e-5);
    }
    // The peers' batches differ from one device's with batch 2: the test can fail.
    let small = base.join("one-small");
    train(
        &small,
        &data,
        config(10, 2, 1),
        1,
        DataParallel::default(),
        false,
        |_| {},
    )
    .unwrap();
    let (a, b) = (metric_losses(&small), metric_losses(&base.join("two-1")));
    assert!(a.iter().zip(&b).any(|(x, y)| (x[0] - y[0]).abs() > 1e-3));
    let _ = std::fs::remove_dir_all(&base);
}

/// The child process (`CTCAL_DDP_MODE`): `stop-at-5` trains two peers and waits after step
/// 5 to be killed; `node` runs node `CTCAL_DDP_NODE` of the loopback run.
#[test]
#[ignore = "run by the data_parallel tests as a child process"]
fn child() {
    let (Ok(out), Ok(mode)) = (
        std::env::var("CTCAL_DDP_OUT"),
        std::env::var("CTCAL_DDP_MODE"),
    ) else {
        return;
    };
    let out = PathBuf::from(out);
    let data = PathBuf::from(std::env::var("CTCAL_DDP_DATA").unwrap());
    if mode == "stop-at-5" {
        train(
            &out,
            &data,
            config(8, 2, 1),
            2,
            DataParallel::default(),
            false,
            |log| {
                if log.step == 5 {
                    std::thread::sleep(Duration::from_secs(600));
                }
            },
        )
        .unwrap();
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let node: usize = var("CTCAL_DDP_NODE").parse().unwrap();
    let orchestrator = format!("127.0.0.1:{}", var("CTCAL_DDP_ORCHESTRATOR"));
    if node == 0 {
        let port = var("CTCAL_DDP_ORCHESTRATOR").parse().unwrap();
        ctcal::train::serve_orchestrator(port).unwrap();
    }
    let parallel = DataParallel {
        num_nodes: 2,
        node_rank: node,
        orchestrator: Some(orchestrator),
        node_address: Some(format!("127.0.0.1:{}", var("CTCAL_DDP_PORT"))),
    };
    train(&out, &data, config(6, 2, 1), 2, parallel, false, |_| {}).unwrap();
}

fn spawn_child(mode: &str, out: &Path, data: &Path, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "data_parallel::child",
        "--ignored",
        "--nocapture",
    ])
    .env("CTCAL_DDP_MODE", mode)
    .env("CTCAL_DDP_OUT", out)
    .env("CTCAL_DDP_DATA", data)
    .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn metric_steps(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

#[test]
fn a_killed_two_peer_run_resumes_to_the_uninterrupted_weights() {
    let base = temp("kill");
    let data = base.join("data");
    write_dataset(&data);
    let (killed, clean) = (base.join("killed"), base.join("clean"));
    let mut child = spawn_child("stop-at-5", &killed, &data, &[]);
    let deadline = Instant::now() + Duration::from_secs(300);
    while metric_steps(&killed) < 5 {
        assert!(Instant::now() < deadline, "child did not reach step 5");
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let latest = std::fs::read_to_string(killed.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-0000004");
    let resumed = train(
        &killed,
        &data,
        config(8, 2, 1),
        2,
        DataParallel::default(),
        true,
        |_| {},
    )
    .unwrap();
    assert_eq!(
        resumed.first().map(|l| l.step),
        Some(5),
        "resumed from step 4"
    );
    train(
        &clean,
        &data,
        config(8, 2, 1),
        2,
        DataParallel::default(),
        false,
        |_| {},
    )
    .unwrap();
    let (a, b) = (final_tensors(&killed, 8), final_tensors(&clean, 8));
    assert_close(&a, &b, 0.0);
    assert_close(&final_ema(&killed, 8), &final_ema(&clean, 8), 0.0);
    assert_eq!(metric_losses(&killed), metric_losses(&clean));
    let _ = std::fs::remove_dir_all(&base);
}

/// A free TCP port of the loopback interface.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Blocked upstream: in burn-collective 0.21.0 the nodes' sync after each global all-reduce
/// (`SyncService::sync`, src/global/node/sync.rs) clears a copy of its list of synced nodes
/// instead of the list, so the second all-reduce between machines waits for ever (seen here:
/// registration and one reduction cross the loopback, the next one hangs). Runs with
/// `--ignored` once a burn-collective 0.21.x fixes it.
#[test]
#[ignore = "burn-collective 0.21.0 hangs on the second all-reduce between machines"]
fn two_machines_of_two_peers_over_loopback_train_as_one_device() {
    let base = temp("nodes");
    let data = base.join("data");
    write_dataset(&data);
    let (nodes, one) = (base.join("nodes"), base.join("one"));
    let orchestrator = free_port().to_string();
    let node = |rank: usize| {
        let env = [
            ("CTCAL_DDP_NODE", rank.to_string()),
            ("CTCAL_DDP_ORCHESTRATOR", orchestrator.clone()),
            ("CTCAL_DDP_PORT", free_port().to_string()),
        ];
        spawn_child("node", &nodes, &data, &env)
    };
    // Node 0 serves the orchestrator; node 1 starts once it listens.
    let mut children = vec![node(0)];
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(format!("127.0.0.1:{orchestrator}")).is_err() {
        assert!(Instant::now() < deadline, "the orchestrator did not start");
        assert!(
            children[0].try_wait().unwrap().is_none(),
            "node 0 exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    children.push(node(1));
    let deadline = Instant::now() + Duration::from_secs(600);
    for mut child in children {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "a node failed: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "the nodes did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    train(
        &one,
        &data,
        config(6, 8, 1),
        1,
        DataParallel::default(),
        false,
        |_| {},
    )
    .unwrap();
    assert_losses_close(&nodes, &one, 1e-5);
    assert_close(&final_tensors(&nodes, 6), &final_tensors(&one, 6), 1e-5);
    let _ = std::fs::remove_dir_all(&base);
}

/// `train` on a thread of its own, failing the test instead of hanging when it does not end.
fn within_two_minutes<T: Send + 'static>(run: impl FnOnce() -> T + Send + 'static) -> T {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || send.send(run()));
    receive
        .recv_timeout(Duration::from_secs(120))
        .expect("the data-parallel run hangs")
}

/// A non-finite loss on one peer's shard stops both peers at that step, naming it, before
/// any update; an error in one peer's step stops the other too, and the run reports the
/// failing peer's own error.
#[test]
fn a_failure_on_one_peer_stops_every_peer() {
    let base = temp("fail");
    let data = base.join("data");
    write_dataset(&data);
    // Poison one sample's latents: whichever peer holds it sees a NaN loss.
    let path = data.join("5.safetensors");
    let mut file = TensorFile::read(&path).unwrap();
    file.tensors.get_mut("latents").unwrap().1[3] = f32::NAN;
    ctcal::weights::write_tensor_file(&path, &file.tensors, None).unwrap();
    let out = base.join("nan");
    let (o, d) = (out.clone(), data.clone());
    let err = within_two_minutes(move || {
        train(
            &o,
            &d,
            config(6, 2, 1),
            2,
            DataParallel::default(),
            false,
            |_| {},
        )
        .unwrap_err()
    });
    let msg = err.to_string();
    assert!(msg.contains("the loss is NaN"), "{msg}");
    assert!(!msg.contains("another peer"), "{msg}");

    // An error in the step of peer 0, then of peer 1 (clean data again): the first whole
    // batch's rows 0 and 2 (peer 1 holds rows 2 and 3).
    std::fs::remove_dir_all(&data).unwrap();
    write_dataset(&data);
    let dataset =
        Arc::new(CachedFeatures::open(&data.join("metadata.jsonl"), BadRowPolicy::Fail).unwrap());
    let first = Loader::new(dataset, &LoaderConfig::new(4, 11), None)
        .unwrap()
        .next_batch()
        .unwrap()
        .indices;
    for row in [0, 2] {
        let out = base.join(format!("error-{row}"));
        let (o, d) = (out.clone(), data.clone());
        let index = first[row];
        let err = within_two_minutes(move || {
            let cfg = config(6, 2, 1);
            train_failing(
                &o,
                &d,
                cfg,
                2,
                DataParallel::default(),
                false,
                |_| {},
                index,
            )
            .unwrap_err()
        });
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("sample {index} is poisoned")),
            "{msg}"
        );
        // Stopped at step 1: no step was logged.
        let logged = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
        assert_eq!(logged, "", "row {row}");
    }
    let _ = std::fs::remove_dir_all(&base);
}
