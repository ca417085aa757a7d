//! Data-parallel training over burn's collective engine (`burn-collective`): one peer per
//! device, peers of a machine as threads, machines joined through burn-collective's global
//! orchestrator.
//!
//! A run of `W` peers with `batch_size` samples each is the run of one device with batches of
//! `W * batch_size`, step for step:
//! - **data**: every machine draws the same seeded order of whole batches (one loader a
//!   machine, shared by its peers, [`NodeBatches`](super::batches::NodeBatches)); caption
//!   dropout is drawn for the whole batch; peer `r` (global rank) takes rows
//!   `r * batch_size ..`.
//! - **randomness**: the timesteps, teacher levels and noise are drawn for the whole batch
//!   from the step's seeds and sliced, so they are those of one device. Only randomness drawn
//!   from the device RNG inside the inputs (a VAE posterior sample) differs: each peer seeds
//!   a stream of its own (from seed, step, micro-batch and rank) and draws it while holding
//!   the process's device RNG, so a resumed run still draws what an uninterrupted one did.
//! - **loss**: every term is a mean over the batch's samples (the diffusion loss and
//!   `mean_b w_b L_ctcal_b`, whose per-sample `L_b` holds the per-noun means, the balance
//!   and the auto-encoder's reconstruction of that sample's maps), so peer `r` scales its
//!   shard's loss by `rows_r / rows` and the gradients are **summed** over peers
//!   (burn-collective's all-reduce of burn's `GradientsParams`): the sum is the gradient of
//!   the whole batch's loss. The logged parts are reduced the same way; the CTCal parts,
//!   which average over samples with nouns, as sums and counts.
//! - **update**: clipping, AdamW and the learning rate then act on identical reduced
//!   gradients on every peer, so the peers' parameters stay identical without broadcasts.
//!   Peer 0 alone keeps the EMA and writes checkpoints, metrics and previews.
//! - **failures**: a peer that fails (an error or a panic in its step, or peer 0's writes)
//!   says so in the next reduction of the step's numbers; every peer then stops at that
//!   step, so none waits forever in an all-reduce.

use std::ops::Range;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend, DeviceId, DeviceOps};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};
use burn_communication::Address;

use crate::calibration::LossParts;
use crate::error::{Error, Result};

/// Where the peers of a run are beyond this machine's devices: the machines (nodes) of a
/// multi-machine run, diffusers/accelerate's `--num_machines`, `--machine_rank` and
/// `--main_process_ip/port`. The default is one machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataParallel {
    /// Machines in the run (0 or 1: this one only).
    pub num_nodes: usize,
    /// This machine's place, `0..num_nodes`; node 0 writes the run's outputs.
    pub node_rank: usize,
    /// `host:port` of burn-collective's global orchestrator (see [`serve_orchestrator`]).
    pub orchestrator: Option<String>,
    /// `host:port` at which the other machines reach this one: its tensor data service
    /// listens on that port.
    pub node_address: Option<String>,
}

impl DataParallel {
    /// Machines in the run.
    pub fn nodes(&self) -> usize {
        self.num_nodes.max(1)
    }

    /// Checks the settings, naming the flag that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.node_rank >= self.nodes() {
            return Err(Error::Config(format!(
                "--node-rank {} is not below --num-nodes {}",
                self.node_rank,
                self.nodes()
            )));
        }
        if self.nodes() > 1 {
            let orchestrator = self.orchestrator.as_deref().ok_or_else(|| {
                Error::Config("--num-nodes above 1 needs --orchestrator HOST:PORT".into())
            })?;
            host_port(orchestrator, "--orchestrator")?;
            let node = self.node_address.as_deref().ok_or_else(|| {
                Error::Config("--num-nodes above 1 needs --node-address HOST:PORT".into())
            })?;
            host_port(node, "--node-address")?;
        }
        Ok(())
    }

    /// The port this machine serves the orchestrator on ([`serve_orchestrator`]): that of
    /// `--orchestrator` on node 0 of a multi-machine run, else none.
    pub fn orchestrator_port(&self) -> Result<Option<u16>> {
        match (&self.orchestrator, self.nodes() > 1 && self.node_rank == 0) {
            (Some(address), true) => Ok(Some(host_port(address, "--orchestrator")?.1)),
            _ => Ok(None),
        }
    }

    /// burn-collective's settings for `devices` peers on this machine.
    pub(crate) fn collective_config(&self, devices: usize) -> Result<CollectiveConfig> {
        self.validate()?;
        let config = CollectiveConfig::default().with_num_devices(devices);
        if self.nodes() == 1 {
            return Ok(config);
        }
        let (orchestrator, node) = match (&self.orchestrator, &self.node_address) {
            (Some(o), Some(n)) => (o, n),
            _ => unreachable!("validated above"),
        };
        let (_, port) = host_port(node, "--node-address")?;
        Ok(config
            .with_num_nodes(self.nodes() as u32)
            .with_global_address(ws_address(orchestrator)?)
            .with_node_address(ws_address(node)?)
            .with_data_service_port(port)
            // burn-collective's default ring cannot reduce a tensor of fewer elements than
            // machines (a bias, the step's numbers); a binary tree reduces any.
            .with_global_all_reduce_strategy(AllReduceStrategy::Tree(2)))
    }
}

/// The devices of this machine a data-parallel run trains on, from `--devices` (`cuda:0,cuda:1`,
/// `cpu,cpu`: each entry `name[:index]`, the index among the backend's devices of its default
/// kind, 0 when left out; the name is for the reader) or `--num-devices N` (indices
/// `0..N`); neither: the backend's default device alone.
pub fn parse_devices<D: DeviceOps>(
    devices: Option<&str>,
    num_devices: Option<usize>,
) -> Result<Vec<D>> {
    let kind = D::default().to_id().type_id;
    let device = |index: u16| D::from_id(DeviceId::new(kind, index));
    match (devices, num_devices) {
        (Some(_), Some(_)) => Err(Error::Config(
            "give --devices or --num-devices, not both".into(),
        )),
        (None, None) => Ok(vec![D::default()]),
        (None, Some(0)) => Err(Error::Config("--num-devices 0: at least one".into())),
        (None, Some(n)) => Ok((0..n.min(u16::MAX as usize) as u16).map(device).collect()),
        (Some(list), None) => list
            .split(',')
            .map(|entry| {
                let entry = entry.trim();
                let bad = || {
                    Error::Config(format!(
                        "--devices {list:?}: {entry:?} is not NAME or NAME:INDEX (e.g. cuda:1)"
                    ))
                };
                let (name, index) = match entry.split_once(':') {
                    Some((name, index)) => (name, index.parse::<u16>().map_err(|_| bad())?),
                    None => (entry, 0),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(bad());
                }
                Ok(device(index))
            })
            .collect(),
    }
}

/// Splits `host:port`, naming `flag` when it is not that.
fn host_port<'a>(value: &'a str, flag: &str) -> Result<(&'a str, u16)> {
    let bad = || {
        Error::Config(format!(
            "{flag} {value:?}: expected HOST:PORT, e.g. 10.0.0.1:29500"
        ))
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() || host.contains('/') || port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

/// The WebSocket address burn-communication connects to.
fn ws_address(host_port: &str) -> Result<Address> {
    Address::from_str(&format!("ws://{host_port}")).map_err(Error::Config)
}

/// Serves burn-collective's global orchestrator on `port` (all interfaces) from a background
/// thread for the rest of the process: node 0 of a multi-machine run starts it, or a process
/// of its own. An error only when the thread cannot start; a port already taken is logged
/// by burn-collective. The orchestrator stops on Ctrl-C or SIGTERM, which it catches; the
/// process then exits (status 130), as it would have without it.
pub fn serve_orchestrator(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("cannot start the orchestrator's runtime: {e}")))?;
    std::thread::Builder::new()
        .name("ctcal-orchestrator".into())
        .spawn(move || {
            runtime.block_on(burn_collective::start_global_orchestrator(port));
            std::process::exit(130);
        })
        .map_err(|e| Error::Config(format!("cannot start the orchestrator thread: {e}")))?;
    Ok(())
}

/// One process runs one collective at a time: burn-collective's local server is one per
/// backend type, so two runs in one process (tests, say) would mix their peers.
static COLLECTIVE: Mutex<()> = Mutex::new(());

/// Holds the process's collective for a run.
pub(crate) fn lock_collective() -> MutexGuard<'static, ()> {
    COLLECTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Backends seed one RNG per process (or per device type), which the peer threads (and any
/// other run in the process) share: a run seeds and draws under this lock, so its draws do
/// not depend on the others' timing.
static DEVICE_RNG: Mutex<()> = Mutex::new(());

/// A peer's place in a run: its global rank among `world` peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Global rank: `node_rank * devices + local index`.
    pub rank: usize,
    /// Peers in the run, over all machines.
    pub world: usize,
}

/// The numbers of a micro-batch a peer contributes to the step's log.
pub(crate) struct MicroParts {
    pub parts: LossParts,
    /// Samples of the peer's shard with nouns.
    pub with_nouns: usize,
    /// The peer's share of the batch's samples, `rows_r / rows`.
    pub share: f64,
}

/// What a peer says of its step, ORed over the peers by [`Peer::reduce_step`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StepFlags {
    /// The step failed here (an error, a panic, or fewer micro-batches than configured).
    pub failed: bool,
    /// The map auto-encoder took gradients.
    pub ae_grads: bool,
    /// The run's time limit is reached: this step is the last.
    pub stop: bool,
}

/// Slots of the reduced step numbers: per micro-batch the three batch means and the four
/// CTCal parts as sums with their count; then a failure, an auto-encoder and a stop count.
const PER_MICRO: usize = 8;

impl Peer {
    /// The only peer of a one-device run.
    pub const SINGLE: Peer = Peer { rank: 0, world: 1 };

    /// Whether this peer writes the run's outputs.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Whether other peers take part.
    pub fn is_parallel(&self) -> bool {
        self.world > 1
    }

    /// This peer's rows of a whole batch of `len` samples: equal shares, the first
    /// `len % world` peers one more.
    pub fn rows(&self, len: usize) -> Range<usize> {
        let (base, extra) = (len / self.world, len % self.world);
        let start = self.rank * base + self.rank.min(extra);
        start..start + base + usize::from(self.rank < extra)
    }

    /// Runs `draw` (seeding the device RNG, then drawing from it) alone among this process's
    /// training threads (the peers of a data-parallel run, other runs in the same process).
    pub fn with_device_rng<T>(&self, draw: impl FnOnce() -> T) -> T {
        let _held = DEVICE_RNG.lock().unwrap_or_else(|p| p.into_inner());
        draw()
    }

    fn id(&self) -> PeerId {
        PeerId(self.rank as u32)
    }

    /// Registers with the collective (on the inner backend, where gradients live) and checks
    /// that every machine counts the same peers.
    pub fn register<B: Backend>(&self, device: &B::Device, config: CollectiveConfig) -> Result<()> {
        burn_collective::register::<B>(self.id(), device.clone(), config).map_err(collective)?;
        let count = self.sum::<B>(vec![1.0], device)?;
        if count[0].round() as usize != self.world {
            return Err(Error::Config(format!(
                "{} peers joined the collective, this machine expected {} (--num-nodes times \
                 the devices of each machine; every machine needs as many devices)",
                count[0], self.world
            )));
        }
        Ok(())
    }

    /// Checks that every peer starts from the same parameters (`moments` of its copies, see
    /// [`param_moments`]): a lazily initialised parameter drawn apart on two peers would
    /// otherwise train two models. Every peer returns the same answer.
    pub fn check_same_start<B: Backend>(
        &self,
        moments: Vec<f64>,
        device: &B::Device,
    ) -> Result<()> {
        let world = self.world as f64;
        let sums = self.sum::<B>(moments.clone(), device)?;
        let differs = moments
            .iter()
            .zip(&sums)
            .any(|(m, s)| (s - world * m).abs() > 1e-9 * (world * m).abs().max(1e-30));
        let differing = self.sum::<B>(vec![f64::from(u8::from(differs))], device)?;
        if differing[0] > 0.0 {
            return Err(Error::Training(format!(
                "{} of {} data-parallel peers start from other parameters than the rest",
                differing[0], self.world
            )));
        }
        Ok(())
    }

    /// Leaves the collective.
    pub fn finish<B: Backend>(&self) -> Result<()> {
        burn_collective::finish_collective::<B>(self.id()).map_err(collective)
    }

    /// Sums `values` over the peers.
    fn sum<B: Backend>(&self, values: Vec<f64>, device: &B::Device) -> Result<Vec<f64>> {
        let n = values.len();
        let t = Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device);
        let reduced = burn_collective::all_reduce::<B>(
            self.id(),
            t.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(collective)?;
        let t = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced));
        t.into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .map_err(|e| Error::Training(format!("reading a reduced tensor: {e:?}")))
    }

    /// The step's log numbers over all peers and each of `flags` set by any peer. Per
    /// micro-batch: the means weighted by each peer's share, the CTCal parts as
    /// `sum(part * count) / sum(count)`; then the mean over micro-batches, as on one device.
    pub fn reduce_step<B: Backend>(
        &self,
        micros: &[MicroParts],
        grad_accum: usize,
        flags: StepFlags,
        device: &B::Device,
    ) -> Result<(LossParts, StepFlags)> {
        let mut values = vec![0.0; grad_accum * PER_MICRO + 3];
        for (slot, m) in values.chunks_mut(PER_MICRO).zip(micros) {
            let (p, n) = (&m.parts, m.with_nouns as f64);
            slot.copy_from_slice(&[
                m.share * p.total,
                m.share * p.diffusion,
                m.share * p.ctcal,
                n * p.pixel,
                n * p.semantic,
                n * p.recon,
                n * p.balance,
                n,
            ]);
        }
        let tail = grad_accum * PER_MICRO;
        values[tail] = f64::from(u8::from(flags.failed || micros.len() != grad_accum));
        values[tail + 1] = f64::from(u8::from(flags.ae_grads));
        values[tail + 2] = f64::from(u8::from(flags.stop));
        let sums = self.sum::<B>(values, device)?;
        let mut parts = LossParts::default();
        let w = 1.0 / grad_accum as f64;
        for slot in sums[..tail].chunks(PER_MICRO) {
            let per_noun = |i: usize| match slot[7] {
                n if n > 0.0 => slot[i] / n,
                _ => 0.0,
            };
            parts.total += w * slot[0];
            parts.diffusion += w * slot[1];
            parts.ctcal += w * slot[2];
            parts.pixel += w * per_noun(3);
            parts.semantic += w * per_noun(4);
            parts.recon += w * per_noun(5);
            parts.balance += w * per_noun(6);
        }
        let flags = StepFlags {
            failed: sums[tail] > 0.0,
            ae_grads: sums[tail + 1] > 0.0,
            stop: sums[tail + 2] > 0.0,
        };
        Ok((parts, flags))
    }

    /// Sums `module`'s gradients over the peers, in burn's parameter-id order; a trainable
    /// parameter without a gradient on this peer (its shard never reached it) takes part
    /// with zeros.
    pub fn reduce_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        mut grads: GradientsParams,
    ) -> Result<GradientsParams> {
        module.visit(&mut FillZeros::<B> {
            grads: &mut grads,
            _b: std::marker::PhantomData,
        });
        grads
            .all_reduce::<B::InnerBackend>(self.id(), ReduceOperation::Sum)
            .map_err(collective)
    }
}

/// The sum and the sum of squares of `module`'s parameters, to compare peers' copies.
pub(crate) fn param_moments<B: Backend, M: burn::module::Module<B>>(module: &M) -> [f64; 2] {
    struct Moments<B: Backend>(Vec<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for Moments<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let v = param.val().flatten::<1>(0, D - 1);
            self.0
                .push(Tensor::cat(vec![v.clone().sum(), v.square().sum()], 0));
        }
    }
    let mut m = Moments::<B>(Vec::new());
    module.visit(&mut m);
    if m.0.is_empty() {
        return [0.0; 2];
    }
    let sums = Tensor::stack::<2>(m.0, 0)
        .sum_dim(0)
        .into_data()
        .convert::<f64>();
    let v: Vec<f64> = sums.iter::<f64>().collect();
    [v[0], v[1]]
}

/// Registers zero gradients for the trainable parameters `grads` lacks.
struct FillZeros<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for FillZeros<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if value.is_require_grad() && self.grads.get::<B::InnerBackend, D>(param.id).is_none() {
            let zeros = value.inner().zeros_like();
            self.grads.register(param.id, zeros);
        }
    }
}

fn collective(e: burn_collective::CollectiveError) -> Error {
    Error::Training(format!("data-parallel collective: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_cover_the_batch_once_in_order() {
        for (len, world) in [(8, 2), (4, 4), (7, 3), (5, 2), (16, 1)] {
            let mut next = 0;
            for rank in 0..world {
                let rows = Peer { rank, world }.rows(len);
                assert_eq!(rows.start, next, "len {len} world {world} rank {rank}");
                assert!(rows.len() == len / world || rows.len() == len / world + 1);
                next = rows.end;
            }
            assert_eq!(next, len);
        }
        assert_eq!(Peer { rank: 1, world: 2 }.rows(4), 2..4);
    }

    /// `run(peer)` on each of two in-process ndarray peers, registered; their results.
    fn on_two_peers<T: Send>(run: impl Fn(Peer) -> T + Sync) -> Vec<T> {
        type B = crate::TestBackend;
        let _held = lock_collective();
        burn_collective::reset_collective::<B>();
        let config = CollectiveConfig::default().with_num_devices(2);
        let out = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..2)
                .map(|rank| {
                    let (run, config) = (&run, config.clone());
                    scope.spawn(move || {
                        let peer = Peer { rank, world: 2 };
                        peer.register::<B>(&Default::default(), config).unwrap();
                        let out = run(peer);
                        peer.finish::<B>().unwrap();
                        out
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        burn_collective::reset_collective::<B>();
        out
    }

    #[test]
    fn peers_starting_apart_both_refuse_and_step_numbers_reduce() {
        type B = crate::TestBackend;
        let device = Default::default();
        let apart = on_two_peers(|peer| {
            let moments = vec![1.0, 2.0 + peer.rank as f64 * 1e-6];
            peer.check_same_start::<B>(moments, &device)
        });
        for result in &apart {
            let err = result.as_ref().unwrap_err().to_string();
            assert!(
                err.contains("2 of 2 data-parallel peers start from other"),
                "{err}"
            );
        }
        let same = on_two_peers(|peer| peer.check_same_start::<B>(vec![1.0, 3.5], &device));
        assert!(same.iter().all(Result::is_ok));
        // Two micro-batches; peer 1's second shard has no nouns.
        let reduced = on_two_peers(|peer| {
            let part = |x: f64| LossParts {
                total: x,
                diffusion: x / 2.0,
                ctcal: x / 4.0,
                pixel: x,
                semantic: 0.0,
                recon: 0.0,
                balance: 0.0,
            };
            let r = peer.rank as f64;
            let micros = [
                MicroParts {
                    parts: part(1.0 + r),
                    with_nouns: 1,
                    share: 0.5,
                },
                MicroParts {
                    parts: part(3.0 + r),
                    with_nouns: 2 - peer.rank * 2,
                    share: 0.5,
                },
            ];
            let flags = StepFlags {
                failed: peer.rank == 1,
                ae_grads: peer.rank == 0,
                stop: false,
            };
            peer.reduce_step::<B>(&micros, 2, flags, &device).unwrap()
        });
        for (parts, flags) in reduced {
            // Means: (1.5 + 3.5) / 2; per-noun pixel: micro 1 (1*1 + 1*2)/2, micro 2 3*2/2.
            assert!((parts.total - 2.5).abs() < 1e-12, "{parts:?}");
            assert!((parts.diffusion - 1.25).abs() < 1e-12);
            assert!((parts.pixel - (1.5 + 3.0) / 2.0).abs() < 1e-12, "{parts:?}");
            assert!(flags.failed && flags.ae_grads && !flags.stop);
        }
    }

    #[test]
    fn device_lists_parse_or_name_the_entry() {
        use burn::backend::ndarray::NdArrayDevice;
        let parse = parse_devices::<NdArrayDevice>;
        assert_eq!(parse(None, None).unwrap(), [NdArrayDevice::Cpu]);
        assert_eq!(parse(Some("cpu, cpu:0"), None).unwrap().len(), 2);
        assert_eq!(parse(None, Some(3)).unwrap().len(), 3);
        for (list, n, want) in [
            (Some("cpu,"), None, "\"\" is not NAME"),
            (Some("cuda:x"), None, "\"cuda:x\" is not NAME"),
            (None, Some(0), "--num-devices 0"),
            (Some("cpu"), Some(1), "not both"),
        ] {
            let err = parse(list, n).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn settings_name_the_flag_that_is_wrong() {
        let nodes = |o: Option<&str>, n: Option<&str>, rank| DataParallel {
            num_nodes: 2,
            node_rank: rank,
            orchestrator: o.map(String::from),
            node_address: n.map(String::from),
        };
        assert!(DataParallel::default().validate().is_ok());
        let ok = nodes(Some("10.0.0.1:29500"), Some("10.0.0.2:29501"), 1);
        assert!(ok.validate().is_ok());
        for (bad, flag) in [
            (nodes(None, Some("h:1"), 0), "--orchestrator HOST:PORT"),
            (nodes(Some("h:1"), None, 0), "--node-address HOST:PORT"),
            (nodes(Some("h"), Some("h:1"), 0), "--orchestrator \"h\""),
            (
                nodes(Some("h:1"), Some("h:99999"), 0),
                "--node-address \"h:99999\"",
            ),
            (nodes(Some("h:1"), Some("h:2"), 2), "--node-rank 2"),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        let config = ok.collective_config(3).unwrap();
        assert!(config.is_valid());
        assert_eq!(ok.orchestrator_port().unwrap(), None, "node 1 serves none");
        let lead = nodes(Some("10.0.0.1:29500"), Some("10.0.0.1:29501"), 0);
        assert_eq!(lead.orchestrator_port().unwrap(), Some(29500));
        assert_eq!(DataParallel::default().orchestrator_port().unwrap(), None);
    }
}
