//! `LazyImage`: an image served chunk by chunk on demand.
//!
//! This module holds the read path (plaintext cache → in-flight fetches →
//! [`load`]); its parts live beside it: the chunk table ([`table`]),
//! options ([`options`]), the plaintext cache ([`cache`]), loading and
//! verifying one chunk ([`load`]), readahead ([`readahead`]), access
//! recording ([`recording`]), prefetch ([`prefetch`]) and materializing to
//! a file ([`materialize`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::runtime::Handle;

use crate::error::{Chain, ChunkError, Error, Result};
use crate::source::{ChunkSource, lock};
use crate::stats::{Counters, Stats};

mod cache;
mod load;
mod materialize;
mod options;
mod prefetch;
mod readahead;
mod recording;
mod table;
#[cfg(test)]
mod test_support;

use cache::PlainCache;
use readahead::Readahead;
use recording::BlockRecorder;

pub use materialize::MaterializeReport;
pub use options::{LazyImageOptions, Verify};
pub use prefetch::PrefetchReport;
pub use recording::{BLOCK_SIZE, BlockLog, BlockRun, ChunkAccess};
pub use table::ChunkTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Read,
    Readahead,
    Prefetch,
}

type ChunkFuture = Shared<BoxFuture<'static, Result<Bytes, Arc<ChunkError>>>>;

struct Inner {
    table: ChunkTable,
    holes: u64,
    source: Arc<dyn ChunkSource>,
    opts: LazyImageOptions,
    rt: Handle,
    cache: Mutex<PlainCache>,
    inflight: Mutex<HashMap<u64, ChunkFuture>>,
    counters: Counters,
    seen: Box<[AtomicU64]>,
    readahead: Mutex<Readahead>,
    access: Mutex<Vec<ChunkAccess>>,
    accessed: Box<[AtomicU64]>,
    blocks: Option<BlockRecorder>,
    recording_stopped: AtomicBool,
    prefetch_report: Mutex<Option<(Instant, PrefetchReport)>>,
    started: Instant,
}

/// A sealed image served lazily: a read fetches only the chunks it touches.
///
/// Cheap to clone (a handle). Reads are `async` ([`read_at`](Self::read_at));
/// [`read_at_blocking`](Self::read_at_blocking) serves threads outside the
/// runtime (FUSE). Chunks flow: plaintext LRU → in-flight fetch (coalesced)
/// → [`ChunkSource`] (L1 → L2 → L3) → name check (untrusted tiers) →
/// AES-GCM open → plaintext LRU. Holes are served as zeros without a fetch.
/// A chunk that cannot be fetched, verified or decrypted fails the read with
/// [`Error::Chunk`] naming the chunk; wrong data is never returned.
#[derive(Clone)]
pub struct LazyImage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LazyImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyImage")
            .field("image_size", &self.inner.table.image_size)
            .field("chunk_size", &self.inner.table.chunk_size)
            .field("chunks", &self.inner.table.chunks.len())
            .finish_non_exhaustive()
    }
}

fn bitset(bits: usize) -> Box<[AtomicU64]> {
    (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()
}

/// Sets a bit; returns whether it was clear before.
fn set_bit(set: &[AtomicU64], bit: u64) -> bool {
    let mask = 1u64 << (bit % 64);
    set.get((bit / 64) as usize)
        .is_some_and(|w| w.fetch_or(mask, Relaxed) & mask == 0)
}

impl LazyImage {
    /// Serves `table` from `source`. Must be called inside a tokio runtime
    /// (its handle is kept for background fetches and blocking reads).
    pub fn new(
        table: ChunkTable,
        source: Arc<dyn ChunkSource>,
        opts: LazyImageOptions,
    ) -> Result<Self> {
        let rt = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        Self::with_runtime(table, source, opts, rt)
    }

    /// Opens the sealed manifest of the image `name` with `kms` and serves it
    /// from `source` (inside a tokio runtime).
    ///
    /// The manifest must be bound to `name` ([`manifest::image_context`]):
    /// its context is stored beside the wrapped key, so without this check a
    /// manifest copied under another image's name would unwrap and serve the
    /// wrong image. A manifest bound to another name, or a wrong or stale
    /// KMS key, fails here with [`Error::Manifest`].
    pub async fn open(
        sealed: &manifest::SealedManifest,
        name: &str,
        kms: &dyn kms_envelope::Kms,
        source: Arc<dyn ChunkSource>,
        opts: LazyImageOptions,
    ) -> Result<Self> {
        let manifest = sealed
            .open_with_context(opts.crypto, kms, &manifest::image_context(name))
            .await
            .map_err(Error::Manifest)?;
        Self::new(manifest.into(), source, opts)
    }

    /// Like [`new`](Self::new) with an explicit runtime handle.
    pub fn with_runtime(
        table: ChunkTable,
        source: Arc<dyn ChunkSource>,
        opts: LazyImageOptions,
        rt: Handle,
    ) -> Result<Self> {
        table.validate()?;
        let n = table.chunks.len();
        let holes = table.chunks.iter().filter(|c| c.is_none()).count() as u64;
        let cap = opts.plaintext_cache_bytes;
        Ok(Self {
            inner: Arc::new(Inner {
                holes,
                source,
                rt,
                cache: Mutex::new(PlainCache::new(cap)),
                inflight: Mutex::default(),
                counters: Counters::default(),
                seen: bitset(n),
                readahead: Mutex::new(Readahead::new()),
                access: Mutex::default(),
                accessed: bitset(n),
                blocks: opts
                    .record_blocks
                    .then(|| BlockRecorder::new(table.image_size)),
                recording_stopped: AtomicBool::new(false),
                prefetch_report: Mutex::default(),
                started: Instant::now(),
                opts,
                table,
            }),
        })
    }

    /// Image size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.table.image_size
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.inner.table.chunk_size
    }

    /// Number of chunks (holes included).
    pub fn chunk_count(&self) -> u64 {
        self.inner.table.chunks.len() as u64
    }

    /// The name of chunk `index`, `None` for a hole or an index past the end.
    pub fn chunk_name(&self, index: u64) -> Option<chunk_core::ChunkName> {
        self.inner
            .table
            .chunks
            .get(usize::try_from(index).ok()?)?
            .as_ref()
            .map(|r| r.name)
    }

    /// The runtime this image runs its fetches on.
    pub fn runtime(&self) -> &Handle {
        &self.inner.rt
    }

    /// Reads up to `buf.len()` bytes at `offset`. Returns the number of bytes
    /// read: less than `buf.len()` only at the end of the image, 0 at or past it.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let t0 = Instant::now();
        let c = &self.inner.counters;
        c.reads.fetch_add(1, Relaxed);
        let result = self.read_inner(offset, buf).await;
        c.read_latency.record(t0.elapsed());
        match &result {
            Ok(n) => {
                c.bytes_served.fetch_add(*n as u64, Relaxed);
            }
            Err(e) => {
                c.read_errors.fetch_add(1, Relaxed);
                tracing::error!(offset, len = buf.len(), error = %Chain(e), "image read failed");
            }
        }
        result
    }

    /// [`read_at`](Self::read_at) for threads outside the runtime (FUSE).
    /// Fails with [`Error::BlockingInRuntime`] when called on a runtime thread.
    pub fn read_at_blocking(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if Handle::try_current().is_ok() {
            return Err(Error::BlockingInRuntime);
        }
        self.inner.rt.block_on(self.read_at(offset, buf))
    }

    async fn read_inner(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inner = &self.inner;
        let size = inner.table.image_size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = (size - offset).min(buf.len() as u64) as usize;
        let cs = u64::from(inner.table.chunk_size);
        let first = offset / cs;
        let last = (offset + len as u64 - 1) / cs;

        self.note_pattern(offset, len as u64, last);
        self.record_block_access(offset, len as u64);

        // Start every missing chunk first so a multi-chunk read fetches in parallel.
        let mut parts: Vec<(u64, Option<Part>)> = Vec::with_capacity((last - first + 1) as usize);
        for index in first..=last {
            let part = match &inner.table.chunks[index as usize] {
                None => {
                    inner.counters.holes_served.fetch_add(1, Relaxed);
                    None
                }
                Some(_) => {
                    self.record_access(index);
                    Some(self.chunk(index, Cause::Read))
                }
            };
            parts.push((index, part));
        }

        for (index, part) in parts {
            let chunk_start = index * cs;
            let from = offset.max(chunk_start);
            let to = (offset + len as u64).min(chunk_start + cs);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match part {
                None => dst.fill(0),
                Some(part) => {
                    let data = match part {
                        Part::Ready(b) => b,
                        Part::Pending(f) => f.await.map_err(|e| self.chunk_error(index, e))?,
                    };
                    let at = (from - chunk_start) as usize;
                    dst.copy_from_slice(&data[at..at + dst.len()]);
                }
            }
        }
        Ok(len)
    }

    fn chunk_error(&self, index: u64, source: Arc<ChunkError>) -> Error {
        let name = self.inner.table.chunks[index as usize]
            .as_ref()
            .map(|r| r.name)
            .unwrap_or(chunk_core::ChunkName::from_bytes([0; 32]));
        Error::Chunk {
            index,
            name,
            offset: index * u64::from(self.inner.table.chunk_size),
            source,
        }
    }

    /// Returns the plaintext of a non-hole chunk, from the cache or a fetch
    /// (joining one in flight).
    fn chunk(&self, index: u64, cause: Cause) -> Part {
        let inner = &self.inner;
        let c = &inner.counters;
        if let Some(b) = lock(&inner.cache).get(index) {
            if cause == Cause::Read {
                c.plaintext_hits.fetch_add(1, Relaxed);
            }
            return Part::Ready(b);
        }
        let mut inflight = lock(&inner.inflight);
        if let Some(f) = inflight.get(&index) {
            if cause == Cause::Read {
                c.plaintext_misses.fetch_add(1, Relaxed);
                c.coalesced.fetch_add(1, Relaxed);
            }
            return Part::Pending(f.clone());
        }
        // The fetch may have finished between the two lookups.
        if let Some(b) = lock(&inner.cache).get(index) {
            if cause == Cause::Read {
                c.plaintext_hits.fetch_add(1, Relaxed);
            }
            return Part::Ready(b);
        }
        match cause {
            Cause::Read => {
                c.demand_fetches.fetch_add(1, Relaxed);
                c.plaintext_misses.fetch_add(1, Relaxed)
            }
            Cause::Readahead => c.readahead_chunks.fetch_add(1, Relaxed),
            Cause::Prefetch => c.prefetch_chunks.fetch_add(1, Relaxed),
        };
        let task_inner = Arc::clone(inner);
        let task = inner.rt.spawn(async move {
            let result = load::load(&task_inner, index).await.map_err(Arc::new);
            if let Ok(b) = &result {
                lock(&task_inner.cache).insert(index, b.clone());
            }
            lock(&task_inner.inflight).remove(&index);
            result
        });
        let fut: ChunkFuture = async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(Arc::new(ChunkError::TaskFailed(e.to_string()))),
            }
        }
        .boxed()
        .shared();
        inflight.insert(index, fut.clone());
        Part::Pending(fut)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let t = &self.inner.table;
        let mut stats = self.inner.counters.snapshot(
            t.image_size,
            t.chunk_size,
            t.chunks.len() as u64,
            self.inner.holes,
        );
        stats.prefetch = lock(&self.inner.prefetch_report).as_ref().map(|(t0, r)| {
            let mut r = r.clone();
            if !r.finished {
                r.elapsed_ms = t0.elapsed().as_millis() as u64;
            }
            r
        });
        stats
    }

    /// Writes [`stats`](Self::stats) as pretty JSON to `path`.
    pub fn write_stats(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.stats())
            .map_err(|e| Error::io("serializing stats for", path, std::io::Error::other(e)))?;
        std::fs::write(path, json).map_err(|e| Error::io("writing stats to", path, e))
    }
}

enum Part {
    Ready(Bytes),
    Pending(ChunkFuture),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::test_support::*;
    use super::*;
    use crate::source::{MemorySource, TierId};

    #[tokio::test]
    async fn whole_image_reads_back_and_holes_are_zero_without_fetch() {
        let size = 10 * CS as usize + 123;
        let (data, source, image) =
            setup(size, &[2, 5], TierId::untrusted("store"), no_readahead());
        let mut out = vec![0xffu8; size + 1000];
        assert_eq!(image.read_at(0, &mut out).await.unwrap(), size);
        assert_eq!(&out[..size], &data[..]);
        // 11 chunks, 2 holes: 9 fetched, holes never asked for.
        assert_eq!(source.total_fetches(), 9);
        let s = image.stats();
        assert_eq!((s.chunks_total, s.hole_chunks, s.holes_served), (11, 2, 2));
        assert_eq!(
            (s.reads, s.bytes_served, s.chunks_fetched),
            (1, size as u64, 9)
        );
        assert_eq!(s.distinct_chunks_fetched, 9);
        assert_eq!(s.tiers["store"].chunks, 9);
        assert_eq!(s.tiers["store"].bytes, s.bytes_fetched);
        assert_eq!(s.bytes_fetched, 8 * (u64::from(CS) + 16) + 123 + 16);
        assert_eq!(s.read_latency.count, 1);
        // Past the end: 0 bytes, no error.
        assert_eq!(image.read_at(size as u64, &mut out).await.unwrap(), 0);
        assert_eq!(image.read_at(u64::MAX, &mut out).await.unwrap(), 0);
        // Second read of the same bytes: plaintext cache, no more fetches.
        assert_eq!(
            image.read_at(100, &mut out[..CS as usize]).await.unwrap(),
            CS as usize
        );
        assert_eq!(source.total_fetches(), 9);
        assert_eq!(image.stats().plaintext_hits, 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_reads_equal_the_original(
            reads in proptest::collection::vec((0u64..(12 * CS as u64), 0usize..(3 * CS as usize)), 1..20),
            cache in prop_oneof![Just(0u64), Just(2 * CS as u64), Just(1 << 20)],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let size = 11 * CS as usize + 77;
                let opts = LazyImageOptions::default().plaintext_cache_bytes(cache);
                let (data, _source, image) = setup(size, &[1, 4, 10], TierId::untrusted("store"), opts);
                for (off, len) in reads {
                    let mut buf = vec![0xaau8; len];
                    let n = image.read_at(off, &mut buf).await.unwrap();
                    let want = if off as usize >= size { 0 } else { len.min(size - off as usize) };
                    prop_assert_eq!(n, want);
                    if n > 0 {
                        prop_assert_eq!(&buf[..n], &data[off as usize..off as usize + n]);
                    }
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_of_one_chunk_share_one_fetch() {
        let data = image_bytes(4 * CS as usize, &[], 9);
        let source = Arc::new(
            MemorySource::new(TierId::untrusted("store")).with_latency(Duration::from_millis(100)),
        );
        let table = seal_into(&data, &source);
        let image = LazyImage::new(table, source.clone(), no_readahead()).unwrap();
        let tasks: Vec<_> = (0..16u64)
            .map(|i| {
                let image = image.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 100];
                    let off = u64::from(CS) + i * 200;
                    image.read_at(off, &mut buf).await.map(|n| (off, n, buf))
                })
            })
            .collect();
        for t in tasks {
            let (off, n, buf) = t.await.unwrap().unwrap();
            assert_eq!(n, 100);
            assert_eq!(&buf[..], &data[off as usize..off as usize + 100]);
        }
        assert_eq!(source.fetch_count(&name_of(&image, 1)), 1);
        let s = image.stats();
        assert_eq!(s.chunks_fetched, 1);
        assert_eq!(s.plaintext_misses + s.plaintext_hits, 16);
        assert!(s.coalesced >= 1, "{s:?}");
    }

    #[test]
    fn blocking_reads_work_outside_the_runtime_only() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (data, _source, image) = rt.block_on(async {
            setup(
                3 * CS as usize,
                &[],
                TierId::untrusted("store"),
                no_readahead(),
            )
        });
        let mut buf = vec![0u8; 300];
        assert_eq!(image.read_at_blocking(4000, &mut buf).unwrap(), 300);
        assert_eq!(&buf[..], &data[4000..4300]);
        let err = rt
            .block_on(async { image.read_at_blocking(0, &mut buf) })
            .unwrap_err();
        assert!(matches!(err, Error::BlockingInRuntime));
    }

    #[tokio::test]
    async fn open_with_kms_serves_the_image_and_a_wrong_key_is_refused() {
        use kms_envelope::LocalKms;
        let data = image_bytes(5 * CS as usize + 10, &[1], 11);
        let source = Arc::new(MemorySource::new(TierId::untrusted("store")));
        let table = seal_into(&data, &source);
        let m = manifest::Manifest {
            source_ref: "test".into(),
            source_digest: "sha256:00".into(),
            image_size: table.image_size,
            chunk_size: table.chunk_size,
            salt_id: 1,
            tool_version: "worker tests".into(),
            chunks: table.chunks,
        };
        let kms = LocalKms::from_keys(
            &chunk_core::RustCrypto,
            [("images".to_owned(), 1, [4u8; 32])],
        )
        .unwrap();
        let sealed = m
            .seal(
                &chunk_core::RustCrypto,
                &kms,
                "images",
                &manifest::image_context("app"),
            )
            .await
            .unwrap();
        let sealed = manifest::SealedManifest::decode(&sealed.encode()).unwrap();
        let image = LazyImage::open(&sealed, "app", &kms, source.clone(), no_readahead())
            .await
            .unwrap();
        let mut out = vec![0u8; data.len()];
        assert_eq!(image.read_at(0, &mut out).await.unwrap(), data.len());
        assert!(out == data);

        let other = LocalKms::from_keys(
            &chunk_core::RustCrypto,
            [("images".to_owned(), 1, [5u8; 32])],
        )
        .unwrap();
        let err = LazyImage::open(&sealed, "app", &other, source.clone(), no_readahead())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Manifest(_)), "{err:?}");

        // The manifest of "app" served under another name is refused, even
        // though the KMS would unwrap it.
        let err = LazyImage::open(&sealed, "other", &kms, source, no_readahead())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Manifest(manifest::Error::WrongContext { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn inconsistent_tables_are_rejected() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _g = rt.enter();
        let source: Arc<dyn ChunkSource> = Arc::new(MemorySource::new(TierId::untrusted("s")));
        let bad = |image_size, chunk_size, n| ChunkTable {
            image_size,
            chunk_size,
            chunks: vec![None; n],
        };
        for t in [
            bad(100, 0, 1),
            bad(100, 10, 9),
            bad(100, 10, 11),
            bad(0, 10, 1),
        ] {
            let e = LazyImage::new(t, source.clone(), LazyImageOptions::default()).unwrap_err();
            assert!(matches!(e, Error::InvalidTable { .. }), "{e:?}");
        }
        assert!(LazyImage::new(bad(0, 10, 0), source, LazyImageOptions::default()).is_ok());
    }
}
