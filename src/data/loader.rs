//! Batches in data order: built in place ([`Batches`]) or ahead of time on a background
//! thread ([`Loader`]) so decoding overlaps the training step.
//!
//! Both yield the same batches: an endless stream across epochs, in the order of
//! [`BatchOrder`]. A sample that fails to load is, under [`Skip`](super::BadRowPolicy::Skip),
//! left out for the rest of the run and replaced by the next one of the same epoch (reported
//! in [`Batch::skipped`]); under [`Fail`](super::BadRowPolicy::Fail) it ends the stream with
//! an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use super::{BadRows, Batch, BatchOrder, DataCursor, Dataset, LoaderConfig};
use crate::error::{Error, Result};

/// Batches built on the calling thread.
pub struct Batches<D: Dataset> {
    dataset: Arc<D>,
    order: BatchOrder,
    known_bad: Vec<bool>,
    stop: Option<Arc<AtomicBool>>,
}

impl<D: Dataset> Batches<D> {
    /// Batches of `dataset` from `cursor` (`None`: the start of a run with `config.seed`); a
    /// cursor saved for another seed or dataset size is an error.
    pub fn new(dataset: Arc<D>, config: &LoaderConfig, cursor: Option<DataCursor>) -> Result<Self> {
        let len = dataset.len();
        let cursor = cursor.unwrap_or(DataCursor::start(config.seed, len));
        if cursor.seed != config.seed || cursor.len != len {
            return Err(Error::Config(format!(
                "the data cursor was saved for seed {} over {} samples; this run has seed {} \
                 over {len} samples",
                cursor.seed, cursor.len, config.seed
            )));
        }
        Ok(Self {
            order: BatchOrder::new(cursor, config.batch_size, config.drop_last)?,
            known_bad: vec![false; len],
            dataset,
            stop: None,
        })
    }

    /// The cursor of the next batch.
    pub fn cursor(&self) -> DataCursor {
        self.order.cursor()
    }

    /// The next batch, loading its samples.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let policy = self.dataset.policy();
        let (dataset, known_bad, stop) = (&self.dataset, &mut self.known_bad, &self.stop);
        let mut skipped = BadRows::default();
        let filled = self.order.fill_batch(|index| {
            if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Err(Error::Loader("stopped".into()));
            }
            if known_bad[index] {
                return Ok(None);
            }
            match dataset.load(index) {
                Ok(sample) => Ok(Some(sample)),
                Err(bad) => {
                    known_bad[index] = true;
                    skipped.0.push(bad.apply(policy)?);
                    Ok(None)
                }
            }
        })?;
        let Some((epoch, samples)) = filled else {
            let bad = self.known_bad.iter().filter(|&&b| b).count();
            return Err(Error::Loader(format!(
                "a whole epoch gave no batch of {}: {bad} of {} samples are unreadable ({skipped})",
                self.order.batch_size(),
                self.known_bad.len(),
            )));
        };
        Batch::collate(samples, epoch, self.order.cursor(), skipped)
    }
}

/// Batches built on a background thread, at most `prefetch` ahead of the consumer.
///
/// Dropping it stops the thread after the sample it is loading. An error (a bad row under
/// [`Fail`](super::BadRowPolicy::Fail)) reaches the consumer as `Err`, after which the
/// stream ends.
pub struct Loader {
    receiver: Option<Receiver<Result<Batch>>>,
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    cursor: DataCursor,
    ended: bool,
}

impl Loader {
    /// Starts loading `dataset` from `cursor` (`None`: the start of a run with `config.seed`).
    pub fn new<D: Dataset + 'static>(
        dataset: Arc<D>,
        config: &LoaderConfig,
        cursor: Option<DataCursor>,
    ) -> Result<Self> {
        let mut batches = Batches::new(dataset, config, cursor)?;
        let stop = Arc::new(AtomicBool::new(false));
        batches.stop = Some(stop.clone());
        let cursor = batches.cursor();
        let (sender, receiver) = sync_channel(config.prefetch);
        let thread = std::thread::Builder::new()
            .name("ctcal-data-loader".into())
            .spawn(move || {
                loop {
                    let batch = batches.next_batch();
                    let failed = batch.is_err();
                    if sender.send(batch).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Loader(format!("cannot start the loader thread: {e}")))?;
        Ok(Self {
            receiver: Some(receiver),
            thread: Some(thread),
            stop,
            cursor,
            ended: false,
        })
    }

    /// The cursor of the next batch [`Loader::next_batch`] returns: save it with a checkpoint
    /// taken after training on the last batch received (batches prefetched but not received
    /// are not counted).
    pub fn cursor(&self) -> DataCursor {
        self.cursor
    }

    /// The next batch, waiting for it if it is not ready.
    pub fn next_batch(&mut self) -> Result<Batch> {
        if self.ended {
            return Err(Error::Loader(
                "the stream ended after an earlier error".into(),
            ));
        }
        let received = match &self.receiver {
            Some(r) => r.recv(),
            None => unreachable!("the receiver lives until drop"),
        };
        match received {
            Ok(Ok(batch)) => {
                self.cursor = batch.next_cursor;
                Ok(batch)
            }
            Ok(Err(e)) => {
                self.ended = true;
                Err(e)
            }
            // The thread ended without sending an error: it panicked.
            Err(_) => {
                self.ended = true;
                let why = match self.thread.take().map(JoinHandle::join) {
                    Some(Err(panic)) => panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into()),
                    _ => "it ended".into(),
                };
                Err(Error::Loader(format!("the loader thread stopped: {why}")))
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    /// The next batch; `None` only after an error was returned.
    fn next(&mut self) -> Option<Result<Batch>> {
        (!self.ended).then(|| self.next_batch())
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver fails the thread's pending or next send.
        self.receiver.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::BadRowPolicy;
    use crate::data::test_util::MemoryDataset;
    use std::time::{Duration, Instant};

    fn sync_batches(data: MemoryDataset, config: &LoaderConfig, n: usize) -> Vec<Batch> {
        let mut b = Batches::new(Arc::new(data), config, None).unwrap();
        (0..n).map(|_| b.next_batch().unwrap()).collect()
    }

    #[test]
    fn the_loader_yields_the_synchronous_batches_in_order() {
        let config = LoaderConfig::new(3, 9);
        let bad = || MemoryDataset {
            bad: vec![2, 5],
            ..MemoryDataset::new(10)
        };
        let expected = sync_batches(bad(), &config, 8);
        let loader = Loader::new(Arc::new(bad()), &config, None).unwrap();
        let got: Vec<Batch> = loader.take(8).map(|b| b.unwrap()).collect();
        assert_eq!(got, expected);
        // 8 good samples: two full batches an epoch, over four epochs; the bad rows are
        // reported once each, then never loaded again.
        let epochs: Vec<u64> = got.iter().map(|b| b.epoch).collect();
        assert_eq!(epochs, [0, 0, 1, 1, 2, 2, 3, 3]);
        let mut reported: Vec<usize> = got
            .iter()
            .flat_map(|b| &b.skipped.0)
            .map(|r| r.line)
            .collect();
        reported.sort_unstable();
        assert_eq!(reported, [3, 6]);
        assert!(
            got.iter()
                .all(|b| b.indices.iter().all(|i| ![2, 5].contains(i)))
        );
    }

    #[test]
    fn resuming_from_the_loader_cursor_continues_the_run() {
        let config = LoaderConfig::new(4, 3).with_prefetch(1);
        let data = || Arc::new(MemoryDataset::new(10));
        let expected = sync_batches(MemoryDataset::new(10), &config, 7);
        let mut first = Loader::new(data(), &config, None).unwrap();
        let mut got: Vec<Batch> = (0..3).map(|_| first.next_batch().unwrap()).collect();
        let saved = serde_json::to_string(&first.cursor()).unwrap();
        drop(first);
        let cursor = serde_json::from_str(&saved).unwrap();
        let resumed = Loader::new(data(), &config, Some(cursor)).unwrap();
        got.extend(resumed.take(4).map(|b| b.unwrap()));
        assert_eq!(got, expected);
        let other_seed = LoaderConfig::new(4, 4);
        assert!(Loader::new(data(), &other_seed, Some(cursor)).is_err());
    }

    #[test]
    fn dropping_mid_epoch_returns_promptly() {
        // 10 ms per sample: the rest of the epoch alone would take 10 s.
        let data = MemoryDataset {
            delay: Duration::from_millis(10),
            ..MemoryDataset::new(1000)
        };
        let mut loader = Loader::new(Arc::new(data), &LoaderConfig::new(8, 0), None).unwrap();
        loader.next_batch().unwrap();
        let (done, wait) = sync_channel(1);
        let start = Instant::now();
        std::thread::spawn(move || {
            drop(loader);
            let _ = done.send(());
        });
        assert!(
            wait.recv_timeout(Duration::from_secs(2)).is_ok(),
            "drop hung"
        );
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_fail_policy_error_reaches_the_consumer() {
        let data = MemoryDataset {
            bad: vec![4],
            policy: BadRowPolicy::Fail,
            ..MemoryDataset::new(6)
        };
        let mut loader = Loader::new(Arc::new(data), &LoaderConfig::new(2, 1), None).unwrap();
        let err = loop {
            match loader.next() {
                Some(Ok(b)) => assert!(b.epoch < 2, "index 4 is met in every epoch"),
                Some(Err(e)) => break e,
                None => panic!("the stream ended without the error"),
            }
        };
        assert_eq!(err.to_string(), "memory.jsonl:5: unreadable 4.bin");
        assert!(loader.next().is_none());
    }

    #[test]
    fn an_epoch_of_bad_samples_is_an_error_not_a_hang() {
        let data = MemoryDataset {
            bad: vec![0, 1, 2],
            ..MemoryDataset::new(4)
        };
        let mut batches = Batches::new(Arc::new(data), &LoaderConfig::new(2, 0), None).unwrap();
        let err = batches.next_batch().unwrap_err().to_string();
        assert!(err.contains("3 of 4 samples are unreadable"), "{err}");
    }
}
