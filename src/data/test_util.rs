//! Test helpers: a self-removing temporary folder and an in-memory dataset.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{BadRow, BadRowPolicy, Dataset, Features, HostTensor, Sample};
use crate::nouns::Nouns;

/// A fresh folder under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/ctcal-<tag>-<pid>-<n>`.
    pub(crate) fn new(tag: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ctcal-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }

    /// `name` inside the folder.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `bytes` to `name` inside the folder.
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path(name), bytes).expect("write a temp file");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cached-features sample whose values identify `index`: latents `[2, 3, 4]`, hidden
/// `[5, 6]`, pooled `[6]`.
pub(crate) fn cached_sample(index: usize, pooled: bool) -> Sample {
    let values = |n: usize, base: f32| (0..n).map(|i| base + i as f32 * 0.01).collect();
    let base = index as f32;
    Sample {
        index,
        line: index + 1,
        caption: format!("a cat number {index}"),
        nouns: Nouns::Unmarked,
        features: Features::Cached {
            latents: HostTensor::new([2, 3, 4], values(24, base)).unwrap(),
            hidden: HostTensor::new([5, 6], values(30, -base)).unwrap(),
            pooled: pooled.then(|| HostTensor::new([6], values(6, base * 2.0)).unwrap()),
        },
    }
}

/// `len` cached samples; indices in `bad` fail to load, each load takes `delay`.
pub(crate) struct MemoryDataset {
    pub len: usize,
    pub bad: Vec<usize>,
    pub policy: BadRowPolicy,
    pub delay: Duration,
}

impl MemoryDataset {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            len,
            bad: Vec::new(),
            policy: BadRowPolicy::Skip,
            delay: Duration::ZERO,
        }
    }
}

impl Dataset for MemoryDataset {
    fn len(&self) -> usize {
        self.len
    }

    fn policy(&self) -> BadRowPolicy {
        self.policy
    }

    fn load(&self, index: usize) -> Result<Sample, BadRow> {
        std::thread::sleep(self.delay);
        if self.bad.contains(&index) {
            return Err(BadRow {
                metadata: PathBuf::from("memory.jsonl"),
                line: index + 1,
                file_name: Some(format!("{index}.bin")),
                reason: format!("unreadable {index}.bin"),
            });
        }
        Ok(cached_sample(index, true))
    }
}
