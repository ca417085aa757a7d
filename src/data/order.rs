//! The data order: a seeded permutation per epoch, cut into batches, with a cursor a
//! checkpoint saves.
//!
//! The order of epoch `e` is a pure function of `(seed, e, len)` ([`epoch_order`]): a
//! Fisher-Yates shuffle driven by SplitMix64, written out here rather than taken from `rand`,
//! whose generators and shuffles may change values between versions. A [`DataCursor`] (seed,
//! epoch, position in that epoch's order) therefore pins the rest of the run: resuming from
//! it yields exactly the batches an uninterrupted run would have yielded next.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the data order stands: what a checkpoint saves to resume bit-identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataCursor {
    /// The shuffling seed.
    pub seed: u64,
    /// The current epoch (0-based).
    pub epoch: u64,
    /// How many entries of this epoch's order were consumed.
    pub position: usize,
    /// Dataset size the order was drawn for; resuming against another size is an error.
    pub len: usize,
}

impl DataCursor {
    /// The start of a run over `len` samples shuffled with `seed`.
    pub fn start(seed: u64, len: usize) -> Self {
        Self {
            seed,
            epoch: 0,
            position: 0,
            len,
        }
    }
}

/// One SplitMix64 step: advances `state` and returns the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw below `n` (> 0), without modulo bias.
fn below(state: &mut u64, n: u64) -> u64 {
    let threshold = n.wrapping_neg() % n; // 2^64 mod n
    loop {
        let x = splitmix64(state);
        if x >= threshold {
            return x % n;
        }
    }
}

/// The order of epoch `epoch`: a permutation of `0..len`, fixed by `(seed, epoch, len)`.
pub fn epoch_order(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
    let mut mix = epoch;
    let mut state = seed ^ splitmix64(&mut mix);
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = below(&mut state, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Cuts the epoch orders into batches of dataset indices, across epoch boundaries, forever.
///
/// A batch never spans two epochs. With `drop_last`, an epoch's tail too short for a full
/// batch is left out; without it, the tail is a smaller last batch.
#[derive(Debug, Clone)]
pub struct BatchOrder {
    batch_size: usize,
    drop_last: bool,
    cursor: DataCursor,
    order: Vec<usize>,
}

impl BatchOrder {
    /// Batches over `cursor.len` samples continuing from `cursor`
    /// ([`DataCursor::start`] for a fresh run).
    pub fn new(cursor: DataCursor, batch_size: usize, drop_last: bool) -> Result<Self> {
        let len = cursor.len;
        if batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        if len == 0 || (drop_last && len < batch_size) {
            return Err(Error::Config(format!(
                "{len} samples make no full batch of {batch_size}"
            )));
        }
        if cursor.position > len {
            return Err(Error::Config(format!(
                "cursor position {} lies beyond the {len} samples of an epoch",
                cursor.position
            )));
        }
        Ok(Self {
            batch_size,
            drop_last,
            cursor,
            order: epoch_order(cursor.seed, cursor.epoch, len),
        })
    }

    /// The cursor of the next batch: save it after a step to resume from there.
    pub fn cursor(&self) -> DataCursor {
        self.cursor
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The next batch of dataset indices and its epoch.
    pub fn next_batch(&mut self) -> (u64, Vec<usize>) {
        let got = self.fill_batch(|i| Ok::<_, std::convert::Infallible>(Some(i)));
        match got {
            Ok(Some(batch)) => batch,
            // Every index is accepted, and `new` checked a batch fits in an epoch.
            Ok(None) | Err(_) => unreachable!("an epoch without a batch"),
        }
    }

    /// The next batch, offering indices in order to `take`, which loads a sample (`Some`),
    /// declines a bad one (`None`), or stops with an error. Declined indices leave the batch
    /// to be filled from the following ones in the same epoch.
    ///
    /// `Ok(None)` when a whole epoch went by without filling a batch (too many declined).
    pub fn fill_batch<T, E>(
        &mut self,
        mut take: impl FnMut(usize) -> std::result::Result<Option<T>, E>,
    ) -> std::result::Result<Option<(u64, Vec<T>)>, E> {
        let len = self.cursor.len;
        let mut epoch_ends = 0;
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            let left = len - self.cursor.position;
            let need = self.batch_size - batch.len();
            if left == 0 || (self.drop_last && left < need) {
                if !batch.is_empty() && !self.drop_last {
                    return Ok(Some((self.cursor.epoch, batch)));
                }
                // The first end may close a partly consumed epoch; the second closes one
                // that was walked from its start without a batch.
                epoch_ends += 1;
                if epoch_ends == 2 {
                    return Ok(None);
                }
                batch.clear();
                self.cursor.epoch += 1;
                self.cursor.position = 0;
                self.order = epoch_order(self.cursor.seed, self.cursor.epoch, len);
                continue;
            }
            let index = self.order[self.cursor.position];
            self.cursor.position += 1;
            if let Some(item) = take(index)? {
                batch.push(item);
                if batch.len() == self.batch_size {
                    return Ok(Some((self.cursor.epoch, batch)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<usize>) -> Vec<usize> {
        v.sort_unstable();
        v
    }

    #[test]
    fn orders_are_fixed_permutations_of_seed_and_epoch() {
        let a = epoch_order(7, 0, 50);
        assert_eq!(a, epoch_order(7, 0, 50));
        assert_eq!(sorted(a.clone()), (0..50).collect::<Vec<_>>());
        assert_ne!(a, (0..50).collect::<Vec<_>>());
        assert_ne!(a, epoch_order(7, 1, 50));
        assert_ne!(a, epoch_order(8, 0, 50));
        assert_eq!(epoch_order(1, 0, 1), [0]);
        assert!(epoch_order(1, 0, 0).is_empty());
        // Value stability: a checkpoint from an older build must resume to the same order.
        // Expected values from an independent Python transcription of the same algorithm.
        assert_eq!(epoch_order(0, 0, 8), [1, 0, 6, 4, 3, 5, 2, 7]);
        assert_eq!(
            epoch_order(7, 3, 12),
            [4, 11, 10, 1, 8, 0, 9, 6, 3, 2, 5, 7]
        );
    }

    #[test]
    fn each_epoch_visits_every_index_once_and_drops_the_short_tail() {
        let mut s = BatchOrder::new(DataCursor::start(3, 10), 3, true).unwrap();
        for epoch in 0..3u64 {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let (e, batch) = s.next_batch();
                assert_eq!(e, epoch);
                assert_eq!(batch.len(), 3);
                seen.extend(batch);
            }
            // 9 of 10 indices, in the epoch's order; the tenth is the dropped tail.
            assert_eq!(seen, epoch_order(3, epoch, 10)[..9]);
        }
        let mut s = BatchOrder::new(DataCursor::start(3, 10), 3, false).unwrap();
        let sizes: Vec<usize> = (0..5).map(|_| s.next_batch().1.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1, 3]);
    }

    #[test]
    fn resuming_from_a_cursor_continues_the_uninterrupted_sequence() {
        for drop_last in [true, false] {
            let mut full = BatchOrder::new(DataCursor::start(11, 7), 2, drop_last).unwrap();
            let expected: Vec<(u64, Vec<usize>)> = (0..12).map(|_| full.next_batch()).collect();
            for stop in 0..12 {
                let mut first = BatchOrder::new(DataCursor::start(11, 7), 2, drop_last).unwrap();
                let mut got: Vec<_> = (0..stop).map(|_| first.next_batch()).collect();
                let saved = serde_json::to_string(&first.cursor()).unwrap();
                let cursor: DataCursor = serde_json::from_str(&saved).unwrap();
                let mut resumed = BatchOrder::new(cursor, 2, drop_last).unwrap();
                got.extend((stop..12).map(|_| resumed.next_batch()));
                assert_eq!(got, expected, "drop_last {drop_last}, stopped after {stop}");
            }
        }
    }

    #[test]
    fn declined_indices_are_replaced_from_the_same_epoch() {
        let mut s = BatchOrder::new(DataCursor::start(5, 6), 2, true).unwrap();
        let order = epoch_order(5, 0, 6);
        let bad = order[1];
        let take = |i: usize| Ok::<_, ()>((i != bad).then_some(i));
        let (e, b) = s.fill_batch(take).unwrap().unwrap();
        assert_eq!((e, b), (0, vec![order[0], order[2]]));
        assert_eq!(s.cursor().position, 3);
        let (_, b) = s.fill_batch(take).unwrap().unwrap();
        assert_eq!(b, order[3..5]);
        // One entry left in epoch 0: too few for a batch, so epoch 1 begins.
        let (e, _) = s.fill_batch(take).unwrap().unwrap();
        assert_eq!(e, 1);
        assert_eq!(
            s.fill_batch(|_| Err::<Option<usize>, _>("stop")),
            Err("stop")
        );
        // Everything declined: a whole epoch without a batch ends the search.
        let mut s = BatchOrder::new(DataCursor::start(5, 6), 2, true).unwrap();
        assert_eq!(s.fill_batch(|_| Ok::<Option<usize>, ()>(None)), Ok(None));
    }

    #[test]
    fn impossible_setups_are_config_errors() {
        assert!(BatchOrder::new(DataCursor::start(0, 3), 4, true).is_err());
        assert!(BatchOrder::new(DataCursor::start(0, 3), 4, false).is_ok());
        assert!(BatchOrder::new(DataCursor::start(0, 0), 1, false).is_err());
        assert!(BatchOrder::new(DataCursor::start(0, 3), 0, false).is_err());
        let far = DataCursor {
            position: 4,
            ..DataCursor::start(0, 3)
        };
        assert!(BatchOrder::new(far, 1, false).is_err());
    }
}
