//! Recording first accesses of chunks and 4 KiB blocks (for prefetch
//! profiles): what a read touched, in order, with its time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{LazyImage, bitset, set_bit};
#[cfg(doc)]
use crate::LazyImageOptions;
use crate::source::lock;

/// The unit of block recording: 4 KiB, the ext4 block size lode writes.
pub const BLOCK_SIZE: u64 = 4096;

/// Stop block recording after this many runs (24 MiB) whatever the window.
const MAX_BLOCK_RUNS: usize = 1 << 20;

/// Blocks `block .. block + count` were first read `at_ms` after opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRun {
    /// First block (image offset / [`BLOCK_SIZE`]).
    pub block: u64,
    /// Number of consecutive blocks.
    pub count: u64,
    /// Milliseconds since the image was opened.
    pub at_ms: u64,
}

/// What [`LazyImage::block_log`] returns: first accesses of blocks in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockLog {
    /// The recording window in milliseconds (0: none was set).
    pub window_ms: u64,
    /// Runs of newly read blocks, in the order they were first read. A block
    /// appears at most once.
    pub runs: Vec<BlockRun>,
    /// Whether recording stopped early at its cap (2^20 runs, 24 MiB).
    pub truncated: bool,
}

impl BlockLog {
    /// Number of distinct blocks recorded.
    pub fn blocks(&self) -> u64 {
        self.runs.iter().map(|r| r.count).sum()
    }
}

/// The block bitmap and the runs recorded so far.
pub(super) struct BlockRecorder {
    bits: Box<[AtomicU64]>,
    runs: Mutex<Vec<BlockRun>>,
    truncated: AtomicBool,
}

impl BlockRecorder {
    /// A recorder for an image of `image_size` bytes.
    pub(super) fn new(image_size: u64) -> Self {
        Self {
            bits: bitset(image_size.div_ceil(BLOCK_SIZE) as usize),
            runs: Mutex::default(),
            truncated: AtomicBool::new(false),
        }
    }
}

/// The first access of one chunk, for prefetch profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkAccess {
    /// Chunk index.
    pub index: u64,
    /// Milliseconds since the image was opened.
    pub at_ms: u64,
}

impl LazyImage {
    /// Whether recordings still run (not stopped, inside the window).
    fn recording(&self) -> bool {
        let inner = &self.inner;
        if inner.recording_stopped.load(Relaxed) {
            return false;
        }
        match inner.opts.record_window {
            Some(w) if inner.started.elapsed() > w => {
                inner.recording_stopped.store(true, Relaxed);
                false
            }
            _ => true,
        }
    }

    pub(super) fn record_access(&self, index: u64) {
        if self.inner.opts.record_access && self.recording() && set_bit(&self.inner.accessed, index)
        {
            let at_ms = self.inner.started.elapsed().as_millis() as u64;
            lock(&self.inner.access).push(ChunkAccess { index, at_ms });
        }
    }

    /// Marks the 4 KiB blocks of `offset .. offset + len` and appends runs of
    /// those that were not marked before.
    pub(super) fn record_block_access(&self, offset: u64, len: u64) {
        let Some(rec) = &self.inner.blocks else {
            return;
        };
        if len == 0 || !self.recording() || rec.truncated.load(Relaxed) {
            return;
        }
        let first = offset / BLOCK_SIZE;
        let last = (offset + len - 1) / BLOCK_SIZE;
        let at_ms = self.inner.started.elapsed().as_millis() as u64;
        let mut new: Vec<BlockRun> = Vec::new();
        for block in first..=last {
            if set_bit(&rec.bits, block) {
                match new.last_mut() {
                    Some(r) if r.block + r.count == block => r.count += 1,
                    _ => new.push(BlockRun {
                        block,
                        count: 1,
                        at_ms,
                    }),
                }
            }
        }
        if new.is_empty() {
            return;
        }
        let mut runs = lock(&rec.runs);
        if runs.len() + new.len() > MAX_BLOCK_RUNS {
            rec.truncated.store(true, Relaxed);
            tracing::warn!(
                runs = runs.len(),
                "block recording stopped: too many runs for one profile"
            );
            return;
        }
        runs.extend(new);
    }

    /// First accesses of chunks by reads, in order (empty unless
    /// [`LazyImageOptions::record_access`] is set). Holes are not recorded.
    pub fn access_log(&self) -> Vec<ChunkAccess> {
        lock(&self.inner.access).clone()
    }

    /// First accesses of 4 KiB blocks by reads, in order (`None` unless
    /// [`LazyImageOptions::record_blocks`] is set). Blocks of holes are
    /// recorded too: they belong to files all the same.
    pub fn block_log(&self) -> Option<BlockLog> {
        let rec = self.inner.blocks.as_ref()?;
        Some(BlockLog {
            window_ms: self
                .inner
                .opts
                .record_window
                .map_or(0, |w| w.as_millis() as u64),
            runs: lock(&rec.runs).clone(),
            truncated: rec.truncated.load(Relaxed),
        })
    }

    /// Stops recording chunk and block accesses now (before walking the
    /// mounted file system to map blocks to files, say, so the walk's own
    /// reads are not recorded). The logs keep what was recorded.
    pub fn stop_recording(&self) {
        self.inner.recording_stopped.store(true, Relaxed);
    }

    /// The recording window, if one was set.
    pub fn record_window(&self) -> Option<Duration> {
        self.inner.opts.record_window
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::image::test_support::*;
    use crate::source::TierId;

    #[tokio::test]
    async fn block_recording_keeps_first_accesses_in_order() {
        // Chunks of 4 KiB = one block each; chunk 2 is a hole.
        let opts = no_readahead().record(Duration::from_secs(3600));
        let (_data, _source, image) =
            setup(8 * CS as usize, &[2], TierId::untrusted("store"), opts);
        let mut buf = vec![0u8; 3 * CS as usize];
        // Blocks 5..8 (to the end), then 1..4 (crossing the hole), then 5 again
        // (nothing new), then a 1-byte read of block 0.
        image
            .read_at(5 * u64::from(CS) + 7, &mut buf)
            .await
            .unwrap();
        image.read_at(u64::from(CS), &mut buf).await.unwrap();
        image
            .read_at(5 * u64::from(CS), &mut buf[..10])
            .await
            .unwrap();
        image.read_at(100, &mut buf[..1]).await.unwrap();
        let log = image.block_log().expect("recording");
        let runs: Vec<(u64, u64)> = log.runs.iter().map(|r| (r.block, r.count)).collect();
        // 5..=7 (the read is clipped at the end), 1..=3 (the hole too), 0.
        assert_eq!(runs, vec![(5, 3), (1, 3), (0, 1)]);
        assert_eq!(log.blocks(), 7);
        assert_eq!(log.window_ms, 3_600_000);
        assert!(!log.truncated);
        assert!(log.runs.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        // Chunks are recorded without the hole.
        let chunks: Vec<u64> = image.access_log().iter().map(|a| a.index).collect();
        assert_eq!(chunks, vec![5, 6, 7, 1, 3, 0]);

        // After stop_recording nothing more is recorded.
        image.stop_recording();
        let (_d, _s, image2) = setup(
            4 * CS as usize,
            &[],
            TierId::untrusted("store"),
            no_readahead().record(Duration::from_secs(3600)),
        );
        image2.stop_recording();
        image2.read_at(0, &mut buf).await.unwrap();
        assert_eq!(image2.block_log().expect("enabled").runs, vec![]);
        assert!(image2.access_log().is_empty());
    }

    #[tokio::test]
    async fn recording_ends_with_its_window_and_is_off_by_default() {
        let opts = no_readahead().record(Duration::from_millis(50));
        let (_data, _source, image) = setup(4 * CS as usize, &[], TierId::untrusted("store"), opts);
        let mut buf = vec![0u8; 10];
        image.read_at(0, &mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        image.read_at(2 * u64::from(CS), &mut buf).await.unwrap();
        let log = image.block_log().expect("recording");
        assert_eq!(log.runs.len(), 1, "{log:?}");
        assert_eq!(log.runs[0].block, 0);
        assert_eq!(image.access_log().len(), 1);

        let (_data, _source, plain) = setup(
            4 * CS as usize,
            &[],
            TierId::untrusted("store"),
            no_readahead(),
        );
        plain.read_at(0, &mut buf).await.unwrap();
        assert!(plain.block_log().is_none());
        assert!(plain.access_log().is_empty());
    }
}
