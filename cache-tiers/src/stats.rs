//! Lock-free counters and a latency histogram readable at any time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Sub-buckets per power of two: 8 gives at most 12.5% relative error.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Values below this are counted exactly.
const LINEAR: u64 = 16;
const BUCKETS: usize = LINEAR as usize + (64 - 4) * SUB;

/// A log-linear histogram of durations (nanoseconds), recorded with relaxed
/// atomics so that recording never blocks and reading works at any time.
///
/// Buckets have at most 12.5% relative width; percentiles report the
/// midpoint of their bucket.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 4
    let sub = ((v >> (e - SUB_BITS)) as usize) & (SUB - 1);
    LINEAR as usize + (e as usize - 4) * SUB + sub
}

/// Lowest and highest value of a bucket.
fn bucket_bounds(i: usize) -> (u64, u64) {
    if i < LINEAR as usize {
        return (i as u64, i as u64);
    }
    let j = i - LINEAR as usize;
    let e = (j / SUB) as u32 + 4;
    let sub = (j % SUB) as u64;
    let width = 1u64 << (e - SUB_BITS);
    let lo = (1u64 << e) + sub * width;
    (lo, lo.saturating_add(width - 1))
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
    }

    /// A consistent-enough copy of the current state (concurrent records may
    /// be partly included).
    pub fn snapshot(&self) -> LatencySummary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let q = |p: f64| -> Duration {
            if count == 0 {
                return Duration::ZERO;
            }
            // Rank of the p-quantile, 1-based.
            let rank = ((p * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    let (lo, hi) = bucket_bounds(i);
                    return Duration::from_nanos(lo + (hi - lo) / 2);
                }
            }
            Duration::from_nanos(self.max_ns.load(Relaxed))
        };
        let sum = self.sum_ns.load(Relaxed);
        LatencySummary {
            count,
            mean: Duration::from_nanos(sum.checked_div(count).unwrap_or(0)),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: Duration::from_nanos(self.max_ns.load(Relaxed)),
        }
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Relaxed);
        }
        self.count.store(0, Relaxed);
        self.sum_ns.store(0, Relaxed);
        self.max_ns.store(0, Relaxed);
    }
}

/// Percentiles of a [`LatencyHistogram`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Number of recorded durations.
    pub count: u64,
    /// Mean.
    pub mean: Duration,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest recorded.
    pub max: Duration,
}

/// Counters of one tier inside a [`Tiered`](crate::Tiered), updated with
/// relaxed atomics.
#[derive(Debug, Default)]
pub(crate) struct TierCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) fills: AtomicU64,
    pub(crate) fill_errors: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) get_latency: LatencyHistogram,
}

impl TierCounters {
    pub(crate) fn snapshot(&self, index: usize, name: &str) -> TierStats {
        TierStats {
            index,
            name: name.to_owned(),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            errors: self.errors.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            fills: self.fills.load(Relaxed),
            fill_errors: self.fill_errors.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            get_latency: self.get_latency.snapshot(),
        }
    }
}

/// What one tier of a [`Tiered`](crate::Tiered) has done so far.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierStats {
    /// Position of the tier, 0 = the top (fastest).
    pub index: usize,
    /// The tier's [`name`](crate::Tier::name).
    pub name: String,
    /// Gets that this tier answered.
    pub hits: u64,
    /// Gets this tier did not have.
    pub misses: u64,
    /// Gets that failed in this tier (the read went on to the next tier).
    pub errors: u64,
    /// Bytes returned by hits.
    pub bytes_read: u64,
    /// Puts into this tier (fills after a lower hit, and [`Tiered::put`](crate::Tiered::put)).
    pub fills: u64,
    /// Puts that failed.
    pub fill_errors: u64,
    /// Bytes put.
    pub bytes_written: u64,
    /// Latency of this tier's gets (hits, misses and errors).
    pub get_latency: LatencySummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_and_are_ordered() {
        let mut last = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_bounds(i);
            assert!(lo <= hi);
            if i > 0 {
                assert_eq!(lo, last + 1, "bucket {i}");
            }
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi), i);
            last = hi;
        }
        assert_eq!(last, u64::MAX);
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = LatencyHistogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 1000);
        let near = |d: Duration, us: f64| {
            let got = d.as_secs_f64() * 1e6;
            assert!((got - us).abs() / us < 0.13, "{got} vs {us}");
        };
        near(s.p50, 500.0);
        near(s.p90, 900.0);
        near(s.p99, 990.0);
        near(s.p999, 999.0);
        assert_eq!(s.max, Duration::from_micros(1000));
        h.reset();
        assert_eq!(h.snapshot().count, 0);
        assert_eq!(h.snapshot().p99, Duration::ZERO);
    }

    proptest::proptest! {
        #[test]
        fn bucket_error_is_bounded(v in 1u64..u64::MAX / 2) {
            let (lo, hi) = bucket_bounds(bucket_of(v));
            proptest::prop_assert!(lo <= v && v <= hi);
            proptest::prop_assert!((hi - lo) as f64 <= v as f64 / 8.0 + 1.0);
        }
    }
}
