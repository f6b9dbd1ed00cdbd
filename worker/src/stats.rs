//! Counters and latency histograms (cache-tiers' [`LatencyHistogram`]),
//! and their serializable snapshot.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use cache_tiers::{LatencyHistogram, LatencySummary};
use serde::{Deserialize, Serialize};

use crate::source::lock;

/// Latency summary in whole microseconds, from a
/// [`cache_tiers::LatencyHistogram`] (the one latency histogram of lode):
/// percentiles are the midpoints of log-linear buckets, within 12.5 % of
/// the true value, and never above `max_us`.
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

impl From<LatencySummary> for Percentiles {
    fn from(s: LatencySummary) -> Self {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let max_us = us(s.max);
        Self {
            count: s.count,
            mean_us: us(s.mean),
            p50_us: us(s.p50).min(max_us),
            p90_us: us(s.p90).min(max_us),
            p99_us: us(s.p99).min(max_us),
            max_us,
        }
    }
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
    /// Chunks whose bytes from an untrusted cache (L2) failed the name check
    /// or decryption: the entry was dropped and the chunk fetched from the
    /// tiers below in the same read (counted once per bad answer).
    #[serde(default)]
    pub l2_integrity_failures: u64,
    /// Chunks whose bytes from the authority (the store, L3) were bad: those
    /// reads failed; `lode verify` finds and deletes such chunks.
    #[serde(default)]
    pub store_integrity_failures: u64,
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
    latency: LatencyHistogram,
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
    pub(crate) l2_integrity_failures: AtomicU64,
    pub(crate) store_integrity_failures: AtomicU64,
    /// Chunk indexes (and whether from the authority) already logged as an
    /// integrity event, so each is logged once.
    integrity_logged: Mutex<std::collections::HashSet<(u64, bool)>>,
    pub(crate) read_latency: LatencyHistogram,
    pub(crate) chunk_latency: LatencyHistogram,
    tiers: Mutex<BTreeMap<String, std::sync::Arc<TierCounters>>>,
}

impl Counters {
    /// `true` the first time an integrity event of chunk `index` (from the
    /// authority or not) is seen: the caller logs it then, and only then.
    pub(crate) fn first_integrity_event(&self, index: u64, authority: bool) -> bool {
        lock(&self.integrity_logged).insert((index, authority))
    }

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
            l2_integrity_failures: l(&self.l2_integrity_failures),
            store_integrity_failures: l(&self.store_integrity_failures),
            tiers: lock(&self.tiers)
                .iter()
                .map(|(k, t)| {
                    (
                        k.clone(),
                        TierStats {
                            chunks: l(&t.chunks),
                            bytes: l(&t.bytes),
                            fetch_latency: t.latency.snapshot().into(),
                        },
                    )
                })
                .collect(),
            read_latency: self.read_latency.snapshot().into(),
            chunk_latency: self.chunk_latency.snapshot().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let h = LatencyHistogram::new();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us * 10));
        }
        let p = Percentiles::from(h.snapshot());
        assert_eq!(p.count, 100);
        assert_eq!(p.max_us, 1000);
        assert_eq!(p.mean_us, 505);
        // True p50 is 500 µs, p90 900 µs, p99 990 µs; buckets are within 12.5 %.
        assert!((440..=563).contains(&p.p50_us), "{p:?}");
        assert!((790..=1000).contains(&p.p90_us), "{p:?}");
        assert!((870..=1000).contains(&p.p99_us), "{p:?}");
        assert!(p.p50_us <= p.p90_us && p.p90_us <= p.p99_us && p.p99_us <= p.max_us);
        assert_eq!(
            Percentiles::from(LatencyHistogram::new().snapshot()),
            Percentiles::default()
        );
    }

    #[test]
    fn stats_json_keeps_its_latency_fields() {
        // bench/ scripts and the cli tests read these names.
        let c = Counters::default();
        c.read_latency.record(Duration::from_micros(250));
        c.tier_fetched("store", 10, Duration::from_millis(40));
        let json = serde_json::to_value(c.snapshot(100, 4096, 1, 0)).unwrap();
        for field in ["count", "mean_us", "p50_us", "p90_us", "p99_us", "max_us"] {
            assert!(
                json["read_latency"][field].is_u64(),
                "read_latency.{field}: {json}"
            );
            assert!(
                json["chunk_latency"][field].is_u64(),
                "chunk_latency.{field}: {json}"
            );
            assert!(
                json["tiers"]["store"]["fetch_latency"][field].is_u64(),
                "fetch_latency.{field}: {json}"
            );
        }
        assert_eq!(json["read_latency"]["max_us"], 250);
        let p50 = json["tiers"]["store"]["fetch_latency"]["p50_us"]
            .as_u64()
            .unwrap();
        assert!((35_000..=40_000).contains(&p50), "{p50}");
    }
}
