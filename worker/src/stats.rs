//! Counters and latency histograms, and their serializable snapshot.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::source::lock;

/// Sub-buckets per power of two: relative error of a percentile ≤ 1/8.
const SUB: u64 = 8;
const BUCKETS: usize = 64 * SUB as usize;

/// A lock-free log-linear histogram of durations in microseconds.
#[derive(Debug)]
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - u64::from(v.leading_zeros()); // v >= 8 so exp >= 3
    let shift = exp - 3;
    let sub = (v >> shift) & (SUB - 1);
    ((shift + 1) * SUB + sub) as usize
}

/// Upper bound (inclusive) of a bucket, in microseconds.
fn bucket_high(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let shift = b / SUB - 1;
    let sub = b % SUB;
    let low = (SUB + sub) << shift;
    low + (1u64 << shift) - 1
}

impl Histogram {
    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us).min(BUCKETS - 1)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Percentiles {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let max_us = self.max_us.load(Relaxed);
        let pct = |q: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_high(i).min(max_us);
                }
            }
            max_us
        };
        Percentiles {
            count,
            mean_us: self.sum_us.load(Relaxed).checked_div(count).unwrap_or(0),
            p50_us: pct(0.50),
            p90_us: pct(0.90),
            p99_us: pct(0.99),
            max_us,
        }
    }
}

/// Latency summary. Percentiles are bucket upper bounds (≤ 12.5 % high).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Mean in microseconds.
    pub mean_us: u64,
    /// Median in microseconds.
    pub p50_us: u64,
    /// 90th percentile in microseconds.
    pub p90_us: u64,
    /// 99th percentile in microseconds.
    pub p99_us: u64,
    /// Largest sample in microseconds.
    pub max_us: u64,
}

/// Per-tier fetch counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierStats {
    /// Chunks this tier answered.
    pub chunks: u64,
    /// Sealed bytes this tier delivered.
    pub bytes: u64,
    /// Fetch latency of this tier's answers.
    pub fetch_latency: Percentiles,
}

/// A snapshot of a [`LazyImage`](crate::LazyImage)'s counters (`--stats FILE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Image size in bytes.
    pub image_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Chunks in the image (holes included).
    pub chunks_total: u64,
    /// Chunks that are holes (all zero, never stored).
    pub hole_chunks: u64,
    /// `read_at` calls.
    pub reads: u64,
    /// Bytes returned by `read_at`.
    pub bytes_served: u64,
    /// `read_at` calls that failed.
    pub read_errors: u64,
    /// Chunk pieces of reads answered with zeros from holes (no fetch).
    pub holes_served: u64,
    /// Chunk pieces of reads answered by the plaintext cache.
    pub plaintext_hits: u64,
    /// Chunk pieces of reads that had to wait for a fetch.
    pub plaintext_misses: u64,
    /// Of the misses, those that joined a fetch already in flight.
    pub coalesced: u64,
    /// Chunks fetched and opened successfully (all causes).
    pub chunks_fetched: u64,
    /// Sealed bytes fetched (all tiers).
    pub bytes_fetched: u64,
    /// Distinct chunk indexes fetched at least once.
    pub distinct_chunks_fetched: u64,
    /// Fetches started by sequential readahead.
    pub readahead_chunks: u64,
    /// Fetches started by `prefetch`.
    pub prefetch_chunks: u64,
    /// Fetches a read had to start itself: no cache, readahead or prefetch
    /// had the chunk or had it in flight (the reads that paid a full fetch).
    #[serde(default)]
    pub demand_fetches: u64,
    /// The latest prefetch (from a profile), while it runs and once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<crate::PrefetchReport>,
    /// Chunk fetches that ended in an error.
    pub chunk_errors: u64,
    /// Of those, bytes that failed the name check or decryption.
    pub verify_failures: u64,
    /// Per tier label.
    pub tiers: BTreeMap<String, TierStats>,
    /// Latency of `read_at` calls.
    pub read_latency: Percentiles,
    /// Latency of chunk fetch + verify + decrypt.
    pub chunk_latency: Percentiles,
}

#[derive(Debug, Default)]
pub(crate) struct TierCounters {
    chunks: AtomicU64,
    bytes: AtomicU64,
    latency: Histogram,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) reads: AtomicU64,
    pub(crate) bytes_served: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) holes_served: AtomicU64,
    pub(crate) plaintext_hits: AtomicU64,
    pub(crate) plaintext_misses: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) chunks_fetched: AtomicU64,
    pub(crate) bytes_fetched: AtomicU64,
    pub(crate) distinct_chunks_fetched: AtomicU64,
    pub(crate) readahead_chunks: AtomicU64,
    pub(crate) prefetch_chunks: AtomicU64,
    pub(crate) demand_fetches: AtomicU64,
    pub(crate) chunk_errors: AtomicU64,
    pub(crate) verify_failures: AtomicU64,
    pub(crate) read_latency: Histogram,
    pub(crate) chunk_latency: Histogram,
    tiers: Mutex<BTreeMap<String, std::sync::Arc<TierCounters>>>,
}

impl Counters {
    pub(crate) fn tier_fetched(&self, label: &str, bytes: u64, latency: Duration) {
        let tier = {
            let mut tiers = lock(&self.tiers);
            match tiers.get(label) {
                Some(t) => t.clone(),
                None => tiers.entry(label.to_owned()).or_default().clone(),
            }
        };
        tier.chunks.fetch_add(1, Relaxed);
        tier.bytes.fetch_add(bytes, Relaxed);
        tier.latency.record(latency);
        self.bytes_fetched.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        image_size: u64,
        chunk_size: u32,
        chunks: u64,
        holes: u64,
    ) -> Stats {
        let l = |a: &AtomicU64| a.load(Relaxed);
        Stats {
            image_size,
            chunk_size,
            chunks_total: chunks,
            hole_chunks: holes,
            reads: l(&self.reads),
            bytes_served: l(&self.bytes_served),
            read_errors: l(&self.read_errors),
            holes_served: l(&self.holes_served),
            plaintext_hits: l(&self.plaintext_hits),
            plaintext_misses: l(&self.plaintext_misses),
            coalesced: l(&self.coalesced),
            chunks_fetched: l(&self.chunks_fetched),
            bytes_fetched: l(&self.bytes_fetched),
            distinct_chunks_fetched: l(&self.distinct_chunks_fetched),
            readahead_chunks: l(&self.readahead_chunks),
            prefetch_chunks: l(&self.prefetch_chunks),
            demand_fetches: l(&self.demand_fetches),
            prefetch: None,
            chunk_errors: l(&self.chunk_errors),
            verify_failures: l(&self.verify_failures),
            tiers: lock(&self.tiers)
                .iter()
                .map(|(k, t)| {
                    (
                        k.clone(),
                        TierStats {
                            chunks: l(&t.chunks),
                            bytes: l(&t.bytes),
                            fetch_latency: t.latency.snapshot(),
                        },
                    )
                })
                .collect(),
            read_latency: self.read_latency.snapshot(),
            chunk_latency: self.chunk_latency.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_values() {
        let mut last = 0;
        for v in (0..5000u64).chain([1 << 20, 1 << 40, u64::MAX / 2]) {
            let b = bucket_of(v);
            assert!(b >= last || v < 5000, "bucket order at {v}");
            assert!(bucket_high(b) >= v, "high({b}) < {v}");
            if b > 0 {
                assert!(bucket_high(b - 1) < v, "value {v} belongs lower than {b}");
            }
            last = b;
        }
    }

    #[test]
    fn percentiles_of_known_samples() {
        let h = Histogram::default();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us * 10));
        }
        let p = h.snapshot();
        assert_eq!(p.count, 100);
        assert_eq!(p.max_us, 1000);
        assert_eq!(p.mean_us, 505);
        // True p50 is 500 µs, p99 990 µs; buckets are at most 12.5 % high.
        assert!((500..=563).contains(&p.p50_us), "{p:?}");
        assert!((990..=1000).contains(&p.p99_us), "{p:?}");
        assert_eq!(Histogram::default().snapshot(), Percentiles::default());
    }
}
