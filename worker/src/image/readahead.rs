//! Sequential readahead: up to 8 streams tracked at once; a stream that
//! read k whole chunks in a row gets min(k, window) chunks fetched ahead.

use super::{Cause, LazyImage};
use crate::source::lock;

/// One sequential stream being tracked for readahead.
#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    /// Offset where the stream's first read started.
    start: u64,
    /// Offset where the previous read of this stream started.
    prev_offset: u64,
    /// Offset where it ended.
    next_offset: u64,
    /// Consecutive sequential reads.
    streak: u32,
    /// First chunk index not yet covered by readahead.
    ra_next: u64,
    /// Logical clock of the last use (for replacement).
    used: u64,
}

/// Independent sequential streams tracked at once (e.g. several files
/// of the ext4 image read in parallel).
const STREAMS: usize = 8;

/// The streams of one image.
pub(super) struct Readahead {
    streams: [Stream; STREAMS],
    clock: u64,
}

impl Readahead {
    pub(super) fn new() -> Self {
        Self {
            streams: [Stream::default(); STREAMS],
            clock: 0,
        }
    }
}

impl LazyImage {
    /// Tracks sequential streams and starts readahead for them.
    pub(super) fn note_pattern(&self, offset: u64, len: u64, last: u64) {
        let window = u64::from(self.inner.opts.readahead_chunks);
        if window == 0 {
            return;
        }
        let cs = u64::from(self.inner.table.chunk_size);
        let n = self.inner.table.chunks.len() as u64;
        let slack = cs / 2;
        let range = {
            let mut ra = lock(&self.inner.readahead);
            ra.clock += 1;
            let clock = ra.clock;
            let hit = ra.streams.iter().position(|s| {
                s.used > 0 && offset >= s.prev_offset && offset <= s.next_offset + slack
            });
            let i = match hit {
                Some(i) => i,
                None => {
                    let (i, _) = ra
                        .streams
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.used)
                        .unwrap_or((0, &Stream::default()));
                    ra.streams[i] = Stream::default();
                    i
                }
            };
            let s = &mut ra.streams[i];
            s.streak = if hit.is_some() { s.streak + 1 } else { 0 };
            if hit.is_none() {
                s.start = offset;
            }
            s.prev_offset = offset;
            s.next_offset = s.next_offset.max(offset + len);
            s.used = clock;
            // Ramp up like the kernel's readahead: a stream that has read
            // k whole chunks in a row gets min(k, window) chunks ahead. The
            // kernel's own readahead makes two contiguous reads out of any
            // file over 128 KiB; a fixed window would fetch whole chunks
            // ahead of every such small file and never use them.
            let covered = (s.next_offset - s.start) / cs;
            if s.streak == 0 || covered == 0 {
                None
            } else {
                let from = s.ra_next.max(last + 1);
                let to = (last + window.min(covered)).min(n.saturating_sub(1));
                if from <= to {
                    s.ra_next = to + 1;
                    Some(from..=to)
                } else {
                    None
                }
            }
        };
        if let Some(range) = range {
            for index in range {
                let skip = self.inner.table.chunks[index as usize].is_none()
                    || lock(&self.inner.cache).contains(index);
                if !skip {
                    let _ = self.chunk(index, Cause::Readahead);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::LazyImageOptions;
    use crate::image::test_support::*;
    use crate::source::TierId;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_reads_trigger_readahead_random_reads_do_not() {
        let opts = LazyImageOptions::default().readahead_chunks(3);
        let (data, source, image) = setup(32 * CS as usize, &[], TierId::untrusted("store"), opts);
        let half = CS as usize / 2;
        let mut buf = vec![0u8; half];
        let read_halves = async |range: std::ops::Range<u64>, buf: &mut Vec<u8>| {
            for i in range {
                image.read_at(i * half as u64, buf).await.unwrap();
                assert_eq!(&buf[..], &data[i as usize * half..(i as usize + 1) * half]);
            }
        };
        // Readahead runs in the background; wait for chunk `i` to be asked for.
        let wait_for = async |i: u64| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while source.fetch_count(&name_of(&image, i)) == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Give a wrongly started further fetch time to show.
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Two sequential reads in chunk 0, then one reaching into chunk 1:
        // one whole chunk read in a row earns one chunk ahead, not three.
        read_halves(0..3, &mut buf).await;
        wait_for(2).await;
        assert_eq!(
            source.fetch_count(&name_of(&image, 2)),
            1,
            "chunk 2 read ahead"
        );
        assert_eq!(
            source.fetch_count(&name_of(&image, 3)),
            0,
            "ramp starts at 1"
        );
        // Four whole chunks read in a row: the full window of 3 ahead.
        read_halves(3..8, &mut buf).await;
        wait_for(6).await;
        for i in 2..=6 {
            assert_eq!(
                source.fetch_count(&name_of(&image, i)),
                1,
                "chunk {i} fetched once"
            );
        }
        assert_eq!(source.fetch_count(&name_of(&image, 7)), 0);
        assert!(image.stats().readahead_chunks >= 3);
        // Reading the readahead chunks is now served without new fetches.
        let before = source.total_fetches();
        let mut big = vec![0u8; 2 * CS as usize];
        tokio::time::sleep(Duration::from_millis(50)).await;
        image.read_at(4 * u64::from(CS), &mut big).await.unwrap();
        assert_eq!(&big[..], &data[4 * CS as usize..6 * CS as usize]);
        assert!(
            source.total_fetches() - before <= 3,
            "only further readahead may fetch"
        );

        // Random reads far apart start no readahead.
        let ra = image.stats().readahead_chunks;
        for off in [20u64, 10, 28, 14] {
            image.read_at(off * u64::from(CS), &mut buf).await.unwrap();
        }
        assert_eq!(image.stats().readahead_chunks, ra);
    }
}
