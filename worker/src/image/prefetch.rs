//! Prefetch: fetching a list of chunks in the background (from a profile).

use std::time::Instant;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use super::{Cause, LazyImage, Part};
#[cfg(doc)]
use crate::Stats;
use crate::error::Chain;
use crate::source::lock;

/// Outcome of [`LazyImage::prefetch`]; also in [`Stats::prefetch`] (the
/// latest prefetch, while it runs and once it is done).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PrefetchReport {
    /// Chunk indexes asked for.
    #[serde(default)]
    pub requested: u64,
    /// Chunks now fetched (or already cached).
    pub fetched: u64,
    /// Chunks skipped because they are holes.
    pub holes: u64,
    /// Chunks that failed (errors are also logged).
    pub failed: u64,
    /// Whether the prefetch has finished.
    #[serde(default)]
    pub finished: bool,
    /// Milliseconds from the start of the prefetch to its end (or to now
    /// while it runs).
    #[serde(default)]
    pub elapsed_ms: u64,
}

impl LazyImage {
    /// Fetches the given chunks in the background, in order, with at most
    /// `concurrency` fetches at once (prefetch profiles). Holes and cached
    /// chunks are skipped. Fetched chunks go through the source (filling its
    /// L1) and into the plaintext cache.
    pub fn prefetch(
        &self,
        indexes: Vec<u64>,
        concurrency: usize,
    ) -> tokio::task::JoinHandle<PrefetchReport> {
        let this = self.clone();
        let t0 = Instant::now();
        let requested = indexes.len() as u64;
        *lock(&self.inner.prefetch_report) = Some((
            t0,
            PrefetchReport {
                requested,
                ..PrefetchReport::default()
            },
        ));
        self.inner.rt.spawn(async move {
            let n = this.chunk_count();
            let mut report = PrefetchReport {
                requested,
                ..PrefetchReport::default()
            };
            let mut pending = Vec::new();
            for index in indexes {
                match this.inner.table.chunks.get(index as usize) {
                    None => {
                        tracing::warn!(index, chunks = n, "prefetch index outside the image");
                        report.failed += 1;
                    }
                    Some(None) => report.holes += 1,
                    Some(Some(_)) => pending.push(index),
                }
            }
            let results: Vec<bool> = stream::iter(pending)
                .map(|index| {
                    let this = this.clone();
                    async move {
                        match this.chunk(index, Cause::Prefetch) {
                            Part::Ready(_) => true,
                            Part::Pending(f) => match f.await {
                                Ok(_) => true,
                                Err(e) => {
                                    let e = this.chunk_error(index, e);
                                    tracing::error!(error = %Chain(&e), "prefetch failed");
                                    false
                                }
                            },
                        }
                    }
                })
                .buffered(concurrency.max(1))
                .collect()
                .await;
            for ok in results {
                if ok {
                    report.fetched += 1;
                } else {
                    report.failed += 1;
                }
            }
            report.finished = true;
            report.elapsed_ms = t0.elapsed().as_millis() as u64;
            *lock(&this.inner.prefetch_report) = Some((t0, report.clone()));
            tracing::info!(
                fetched = report.fetched,
                holes = report.holes,
                failed = report.failed,
                elapsed_ms = report.elapsed_ms,
                "prefetch finished"
            );
            report
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::image::test_support::*;
    use crate::source::TierId;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefetch_fetches_listed_chunks_and_access_is_recorded() {
        let opts = no_readahead().record_access(true);
        let (_data, source, image) = setup(8 * CS as usize, &[3], TierId::untrusted("store"), opts);
        let report = image.prefetch(vec![5, 3, 1, 99], 2).await.unwrap();
        assert_eq!(
            (
                report.requested,
                report.fetched,
                report.holes,
                report.failed,
                report.finished
            ),
            (4, 2, 1, 1, true)
        );
        assert_eq!(source.total_fetches(), 2);
        let stats = image.stats();
        assert_eq!(stats.prefetch_chunks, 2);
        assert_eq!(stats.prefetch, Some(report));
        let mut buf = vec![0u8; 10];
        for off in [6u64, 1, 3, 6, 5] {
            image.read_at(off * u64::from(CS), &mut buf).await.unwrap();
        }
        // 1 and 5 were prefetched: only 6 more fetch. The hole (3) is not recorded.
        assert_eq!(source.total_fetches(), 3);
        assert_eq!(image.stats().demand_fetches, 1);
        let order: Vec<u64> = image.access_log().iter().map(|a| a.index).collect();
        assert_eq!(order, vec![6, 1, 5]);
    }
}
