//! [`NodeBatches`]: one loader a machine, shared by the machine's peers of a data-parallel
//! run, so each whole batch is decoded once however many devices train on it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::data::{Batch, DataCursor, Dataset, Loader, LoaderConfig};
use crate::error::{Error, Result};

/// Whole batches in data order, each handed to every local peer once.
///
/// Batch `seq` (the run's micro-batch count, `step * grad_accum + micro`) is loaded by the
/// first peer to ask for it, prepared once (caption dropout), and kept until each of the
/// `peers` took it. Peers ask for consecutive numbers, at their own pace.
pub(crate) struct NodeBatches {
    state: Mutex<State>,
    peers: usize,
}

struct State {
    loader: Loader,
    /// The number of the next batch the loader yields.
    next: u64,
    /// Loaded batches not yet taken by every peer: the batch (or why it failed) and the
    /// peers still to take it.
    ready: BTreeMap<u64, (std::result::Result<Arc<Batch>, String>, usize)>,
}

impl NodeBatches {
    /// Starts loading whole batches of `config` from `cursor`, numbered from `first`.
    pub fn new<D: Dataset + 'static>(
        dataset: Arc<D>,
        config: &LoaderConfig,
        cursor: Option<DataCursor>,
        first: u64,
        peers: usize,
    ) -> Result<Self> {
        Ok(Self {
            state: Mutex::new(State {
                loader: Loader::new(dataset, config, cursor)?,
                next: first,
                ready: BTreeMap::new(),
            }),
            peers,
        })
    }

    /// Batch `seq`, loaded and passed through `prepare(batch, seq)` by the first peer that
    /// asks. A loading error reaches every peer.
    pub fn take(
        &self,
        seq: u64,
        prepare: impl Fn(&mut Batch, u64) -> Result<()>,
    ) -> Result<Arc<Batch>> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::Loader("a peer panicked while loading".into()))?;
        while state.next <= seq {
            let n = state.next;
            let loaded = state
                .loader
                .next_batch()
                .and_then(|mut b| prepare(&mut b, n).map(|()| Arc::new(b)))
                .map_err(|e| e.to_string());
            state.ready.insert(n, (loaded, self.peers));
            state.next += 1;
        }
        let Some((loaded, left)) = state.ready.get_mut(&seq) else {
            return Err(Error::Loader(format!(
                "batch {seq} was asked for more than {} times",
                self.peers
            )));
        };
        *left -= 1;
        let out = loaded.clone().map_err(Error::Loader);
        if *left == 0 {
            state.ready.remove(&seq);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::MemoryDataset;

    #[test]
    fn every_peer_gets_each_batch_once_prepared_once() {
        let data = Arc::new(MemoryDataset::new(12));
        let config = LoaderConfig::new(4, 3);
        let shared = NodeBatches::new(data.clone(), &config, None, 0, 2).unwrap();
        let mut plain = Loader::new(data, &config, None).unwrap();
        let prepared = std::sync::atomic::AtomicUsize::new(0);
        let prepare = |b: &mut Batch, seq: u64| {
            prepared.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            b.captions[0] = format!("batch {seq}");
            Ok(())
        };
        // Peer 0 runs two batches ahead of peer 1.
        let a0 = shared.take(0, prepare).unwrap();
        let a1 = shared.take(1, prepare).unwrap();
        let b0 = shared.take(0, prepare).unwrap();
        let b1 = shared.take(1, prepare).unwrap();
        assert_eq!(prepared.load(std::sync::atomic::Ordering::SeqCst), 2);
        for (seq, (a, b)) in [(a0, b0), (a1, b1)].into_iter().enumerate() {
            assert!(Arc::ptr_eq(&a, &b));
            let mut want = plain.next_batch().unwrap();
            want.captions[0] = format!("batch {seq}");
            assert_eq!(*a, want);
        }
        let err = shared.take(0, prepare).unwrap_err();
        assert!(err.to_string().contains("more than 2 times"), "{err}");
    }
}
