//! How a [`Trainer`](super::Trainer) runs its optimiser loop: on the calling thread for one
//! device ([`OneDevice`]), or as one peer thread per device of a data-parallel run
//! ([`PeerThreads`]), the first device's peer on the calling thread (it talks to the
//! listeners).

use burn::tensor::backend::AutodiffBackend;
use burn_collective::CollectiveConfig;

use super::parallel::{Peer, lock_collective};
use super::steps::{LoopEnd, LoopSetup, run_steps};
use super::{StepLog, TrainInputs, Trainable, stable_ids};
use crate::backend::KernelBackend;
use crate::calibration::MapAutoEncoder;
use crate::error::{Error, Result};

/// Runs the optimiser loop of `model` from the main peer's `setup`.
pub(crate) trait PeerRunner<B: AutodiffBackend, M, I: ?Sized> {
    /// The place of this machine's first peer (the one on the calling thread).
    fn main_peer(&self) -> Peer;

    /// Peers on this machine.
    fn local(&self) -> usize;

    /// The main peer's device (previews and validation images render there).
    fn main_device(&self) -> &B::Device;

    /// Runs the loop and returns the main peer's end.
    fn run(
        self,
        model: M,
        setup: LoopSetup<'_, I>,
        started: impl FnMut(usize),
        on_step: impl FnMut(&StepLog, &M) -> Result<()>,
    ) -> Result<LoopEnd<M, MapAutoEncoder<B>>>;
}

/// The loop on one device, on the calling thread.
pub(crate) struct OneDevice<'d, B: AutodiffBackend>(pub &'d B::Device);

impl<B, M, I> PeerRunner<B, M, I> for OneDevice<'_, B>
where
    B: AutodiffBackend + KernelBackend,
    M: Trainable<B>,
    I: TrainInputs<B, M> + ?Sized,
{
    fn main_peer(&self) -> Peer {
        Peer::SINGLE
    }

    fn local(&self) -> usize {
        1
    }

    fn main_device(&self) -> &B::Device {
        self.0
    }

    fn run(
        self,
        model: M,
        setup: LoopSetup<'_, I>,
        started: impl FnMut(usize),
        on_step: impl FnMut(&StepLog, &M) -> Result<()>,
    ) -> Result<LoopEnd<M, MapAutoEncoder<B>>> {
        run_steps(model, setup, self.0, started, on_step)
    }
}

/// One peer per device of this machine: `peers[i]` is device `i`'s inputs and device.
pub(crate) struct PeerThreads<'p, B: AutodiffBackend, I: ?Sized> {
    pub peers: &'p [(&'p I, B::Device)],
    /// The global rank of this machine's first peer.
    pub first_rank: usize,
    /// Peers over all machines.
    pub world: usize,
    pub collective: CollectiveConfig,
}

impl<B, M, I> PeerRunner<B, M, I> for PeerThreads<'_, B, I>
where
    B: AutodiffBackend + KernelBackend,
    M: Trainable<B>,
    I: TrainInputs<B, M> + Sync + ?Sized,
{
    fn main_peer(&self) -> Peer {
        Peer {
            rank: self.first_rank,
            world: self.world,
        }
    }

    fn local(&self) -> usize {
        self.peers.len()
    }

    fn main_device(&self) -> &B::Device {
        &self.peers[0].1
    }

    fn run(
        self,
        model: M,
        setup: LoopSetup<'_, I>,
        started: impl FnMut(usize),
        on_step: impl FnMut(&StepLog, &M) -> Result<()>,
    ) -> Result<LoopEnd<M, MapAutoEncoder<B>>> {
        let _held = lock_collective();
        burn_collective::reset_collective::<B::InnerBackend>();
        let place = |i: usize| Peer {
            rank: self.first_rank + i,
            world: self.world,
        };
        let collective = &self.collective;
        // Parameters not loaded from files are drawn at first use: once, here, so that every
        // peer's copy holds the same values (a clone of a lazy parameter draws its own).
        let model = Peer::SINGLE.with_device_rng(|| stable_ids(model, "denoiser"));
        let result = std::thread::scope(|scope| {
            let mut others = Vec::new();
            for (i, (inputs, device)) in self.peers.iter().enumerate().skip(1) {
                let peer = place(i);
                let model = model.clone().fork(device);
                let setup = LoopSetup {
                    inputs: *inputs,
                    peer,
                    ..setup.borrowed()
                };
                let thread = std::thread::Builder::new()
                    .name(format!("ctcal-peer-{}", peer.rank))
                    .spawn_scoped(scope, move || {
                        peer.register::<B::InnerBackend>(device, collective.clone())?;
                        let end = run_steps(model, setup, device, |_| {}, |_, _| Ok(()));
                        peer.finish::<B::InnerBackend>()?;
                        end.map(drop)
                    })
                    .map_err(|e| Error::Training(format!("cannot start a peer thread: {e}")))?;
                others.push(thread);
            }
            let (_, device) = &self.peers[0];
            let peer = place(0);
            let main = peer
                .register::<B::InnerBackend>(device, collective.clone())
                .and_then(|()| {
                    let setup = LoopSetup { peer, ..setup };
                    run_steps(model, setup, device, started, on_step)
                });
            let finished = peer.finish::<B::InnerBackend>();
            let mut errors = Vec::new();
            let end = main.map_err(|e| errors.push(e)).ok();
            for thread in others {
                let ended = thread
                    .join()
                    .unwrap_or_else(|_| Err(Error::Training("a peer thread panicked".into())));
                errors.extend(ended.err());
            }
            // A peer's own error before the note that another peer failed.
            errors.sort_by_key(|e| matches!(e, Error::PeerFailed { .. }));
            match (end, errors.into_iter().next()) {
                (Some(end), None) => finished.map(|()| end),
                (_, Some(e)) => Err(e),
                (None, None) => unreachable!("the main peer's error is in the list"),
            }
        });
        burn_collective::reset_collective::<B::InnerBackend>();
        result
    }
}

/// Checks `devices` peers against their inputs: one inputs for all, or one each.
pub(crate) fn pair_inputs<'a, I: ?Sized, D: Clone>(
    inputs: &[&'a I],
    devices: &[D],
) -> Result<Vec<(&'a I, D)>> {
    match (inputs.len(), devices.len()) {
        (_, 0) => Err(Error::Config("no device to train on".into())),
        (1, _) => Ok(devices.iter().map(|d| (inputs[0], d.clone())).collect()),
        (n, m) if n == m => Ok(inputs
            .iter()
            .copied()
            .zip(devices.iter().cloned())
            .collect()),
        (n, m) => Err(Error::Config(format!(
            "{n} inputs for {m} devices: give one for all devices or one per device"
        ))),
    }
}
