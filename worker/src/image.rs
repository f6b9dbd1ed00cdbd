//! `LazyImage`: an image served chunk by chunk on demand.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunk_core::{ChunkRef, CryptoProvider};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{self, StreamExt};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::crypto;
use crate::error::{ChunkError, Error, Result};
use crate::source::{ChunkSource, lock};
use crate::stats::{Counters, Stats};

/// What the worker needs of an opened manifest: sizes and one optional
/// [`ChunkRef`] per chunk (`None` = hole, all zeros, never stored).
#[derive(Debug, Clone)]
pub struct ChunkTable {
    /// Image size in bytes.
    pub image_size: u64,
    /// Chunk size in bytes (the last chunk may be shorter).
    pub chunk_size: u32,
    /// One entry per chunk.
    pub chunks: Vec<Option<ChunkRef>>,
}

impl ChunkTable {
    /// Checks that sizes and the number of chunks agree.
    pub fn validate(&self) -> Result<()> {
        if self.chunk_size == 0 {
            return Err(Error::InvalidTable {
                reason: "chunk size is 0".into(),
            });
        }
        let want = self.image_size.div_ceil(u64::from(self.chunk_size));
        if self.chunks.len() as u64 != want {
            return Err(Error::InvalidTable {
                reason: format!(
                    "{} chunk entries for an image of {} bytes in chunks of {} (want {want})",
                    self.chunks.len(),
                    self.image_size,
                    self.chunk_size
                ),
            });
        }
        Ok(())
    }

    /// Plaintext length of chunk `index`.
    fn chunk_len(&self, index: u64) -> usize {
        let start = index * u64::from(self.chunk_size);
        (self.image_size - start).min(u64::from(self.chunk_size)) as usize
    }
}

impl From<manifest::Manifest> for ChunkTable {
    fn from(m: manifest::Manifest) -> Self {
        Self {
            image_size: m.image_size,
            chunk_size: m.chunk_size,
            chunks: m.chunks,
        }
    }
}

/// When to check a chunk's name (SHA-256 of the ciphertext) before decrypting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verify {
    /// Check bytes from untrusted tiers (L2, L3); skip the check for a
    /// trusted tier (the local L1 that only ever stores verified bytes).
    /// AES-GCM authenticates every byte either way.
    #[default]
    UntrustedTiers,
    /// Check every chunk, whatever tier answered.
    Always,
}

/// Tuning of a [`LazyImage`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LazyImageOptions {
    /// Bytes of decrypted chunks kept in memory (LRU). 0 disables the cache.
    pub plaintext_cache_bytes: u64,
    /// Most chunks fetched ahead on a sequential read pattern (a stream that
    /// has read k whole chunks in a row gets min(k, this) ahead). 0
    /// disables readahead.
    pub readahead_chunks: u32,
    /// Name-check policy.
    pub verify: Verify,
    /// Record the first access of each chunk (for prefetch profiles):
    /// [`LazyImage::access_log`].
    pub record_access: bool,
    /// Record the first access of each 4 KiB block of the image
    /// ([`BLOCK_SIZE`]), in order and with its time, so that a profile can
    /// name the files that were read: [`LazyImage::block_log`]. Memory: one
    /// bit per block plus one [`BlockRun`] per read that touched new blocks.
    pub record_blocks: bool,
    /// Stop both recordings this long after the image was opened (`None`:
    /// until [`LazyImage::stop_recording`]).
    pub record_window: Option<Duration>,
    /// The crypto backend (default: `chunk_core::RustCrypto`).
    pub crypto: &'static dyn CryptoProvider,
    /// A chunk fetch that takes longer fails with [`ChunkError::Timeout`]
    /// (EIO at FUSE) instead of hanging readers (default 60 s).
    pub fetch_timeout: std::time::Duration,
}

impl Default for LazyImageOptions {
    fn default() -> Self {
        Self {
            plaintext_cache_bytes: 64 << 20,
            readahead_chunks: 4,
            verify: Verify::default(),
            record_access: false,
            record_blocks: false,
            record_window: None,
            crypto: &chunk_core::RustCrypto,
            fetch_timeout: std::time::Duration::from_secs(60),
        }
    }
}

impl LazyImageOptions {
    /// Sets [`plaintext_cache_bytes`](Self::plaintext_cache_bytes).
    #[must_use]
    pub fn plaintext_cache_bytes(mut self, bytes: u64) -> Self {
        self.plaintext_cache_bytes = bytes;
        self
    }
    /// Sets [`readahead_chunks`](Self::readahead_chunks).
    #[must_use]
    pub fn readahead_chunks(mut self, chunks: u32) -> Self {
        self.readahead_chunks = chunks;
        self
    }
    /// Sets [`verify`](Self::verify).
    #[must_use]
    pub fn verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self
    }
    /// Sets [`crypto`](Self::crypto).
    #[must_use]
    pub fn crypto(mut self, provider: &'static dyn CryptoProvider) -> Self {
        self.crypto = provider;
        self
    }
    /// Sets [`fetch_timeout`](Self::fetch_timeout).
    #[must_use]
    pub fn fetch_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }
    /// Sets [`record_access`](Self::record_access).
    #[must_use]
    pub fn record_access(mut self, record: bool) -> Self {
        self.record_access = record;
        self
    }
    /// Sets [`record_blocks`](Self::record_blocks).
    #[must_use]
    pub fn record_blocks(mut self, record: bool) -> Self {
        self.record_blocks = record;
        self
    }
    /// Sets [`record_window`](Self::record_window).
    #[must_use]
    pub fn record_window(mut self, window: Option<Duration>) -> Self {
        self.record_window = window;
        self
    }
    /// Records chunks and blocks for `window` after opening: the settings of
    /// a prefetch-profile recording (`lode mount --record-profile`).
    #[must_use]
    pub fn record(self, window: Duration) -> Self {
        self.record_access(true)
            .record_blocks(true)
            .record_window(Some(window))
    }
}

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

struct BlockRecorder {
    bits: Box<[AtomicU64]>,
    runs: Mutex<Vec<BlockRun>>,
    truncated: AtomicBool,
}

/// The first access of one chunk, for prefetch profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkAccess {
    /// Chunk index.
    pub index: u64,
    /// Milliseconds since the image was opened.
    pub at_ms: u64,
}

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

/// Outcome of [`LazyImage::materialize`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterializeReport {
    /// Size of the written file.
    pub image_size: u64,
    /// Chunks fetched and written.
    pub chunks_written: u64,
    /// Chunks left as sparse holes.
    pub holes: u64,
    /// Sealed bytes fetched.
    pub bytes_fetched: u64,
    /// Wall time in milliseconds.
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Read,
    Readahead,
    Prefetch,
}

type ChunkFuture = Shared<BoxFuture<'static, Result<Bytes, Arc<ChunkError>>>>;

/// Decrypted chunks, bounded by bytes.
struct PlainCache {
    lru: LruCache<u64, Bytes>,
    bytes: u64,
    cap: u64,
}

impl PlainCache {
    fn get(&mut self, index: u64) -> Option<Bytes> {
        self.lru.get(&index).cloned()
    }

    fn contains(&self, index: u64) -> bool {
        self.lru.contains(&index)
    }

    fn insert(&mut self, index: u64, data: Bytes) {
        let len = data.len() as u64;
        if len > self.cap {
            return;
        }
        if let Some(old) = self.lru.put(index, data) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += len;
        while self.bytes > self.cap {
            match self.lru.pop_lru() {
                Some((_, v)) => self.bytes -= v.len() as u64,
                None => break,
            }
        }
    }
}

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

struct Readahead {
    streams: [Stream; STREAMS],
    clock: u64,
}

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
                cache: Mutex::new(PlainCache {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                    cap,
                }),
                inflight: Mutex::default(),
                counters: Counters::default(),
                seen: bitset(n),
                readahead: Mutex::new(Readahead {
                    streams: [Stream::default(); STREAMS],
                    clock: 0,
                }),
                access: Mutex::default(),
                accessed: bitset(n),
                blocks: opts.record_blocks.then(|| BlockRecorder {
                    bits: bitset(table.image_size.div_ceil(BLOCK_SIZE) as usize),
                    runs: Mutex::default(),
                    truncated: AtomicBool::new(false),
                }),
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
                tracing::error!(offset, len = buf.len(), error = %e, "image read failed");
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
            let result = load(&task_inner, index).await.map_err(Arc::new);
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

    /// Tracks sequential streams and starts readahead for them.
    fn note_pattern(&self, offset: u64, len: u64, last: u64) {
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

    fn record_access(&self, index: u64) {
        if self.inner.opts.record_access && self.recording() && set_bit(&self.inner.accessed, index)
        {
            let at_ms = self.inner.started.elapsed().as_millis() as u64;
            lock(&self.inner.access).push(ChunkAccess { index, at_ms });
        }
    }

    /// Marks the 4 KiB blocks of `offset .. offset + len` and appends runs of
    /// those that were not marked before.
    fn record_block_access(&self, offset: u64, len: u64) {
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
                                    tracing::error!(error = %e, "prefetch failed");
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

    /// Writes the whole image to `path` (created or truncated), fetching up to
    /// `parallelism` chunks at once. Holes stay sparse holes. The plaintext
    /// cache is bypassed so a pull does not evict what mounted readers use.
    pub async fn materialize(&self, path: &Path, parallelism: usize) -> Result<MaterializeReport> {
        let t0 = Instant::now();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("creating", path, e))?;
        file.set_len(self.size())
            .map_err(|e| Error::io("sizing", path, e))?;
        let file = Arc::new(file);
        let before = self.inner.counters.bytes_fetched.load(Relaxed);
        let cs = u64::from(self.chunk_size());
        let indexes: Vec<u64> = (0..self.chunk_count())
            .filter(|&i| self.inner.table.chunks[i as usize].is_some())
            .collect();
        let holes = self.chunk_count() - indexes.len() as u64;
        let mut writes = stream::iter(indexes)
            .map(|index| {
                let inner = Arc::clone(&self.inner);
                let file = Arc::clone(&file);
                async move {
                    let data = load(&inner, index)
                        .await
                        .map_err(|e| (index, Arc::new(e)))?;
                    tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        file.write_all_at(&data, index * cs)
                    })
                    .await
                    .map_err(|e| (index, Arc::new(ChunkError::TaskFailed(e.to_string()))))?
                    .map_err(|e| {
                        (
                            index,
                            Arc::new(ChunkError::Fetch(crate::error::SourceError::Tier {
                                tier: "local file".into(),
                                source: Box::new(e),
                            })),
                        )
                    })
                }
            })
            .buffer_unordered(parallelism.max(1));
        let mut written = 0;
        while let Some(r) = writes.next().await {
            match r {
                Ok(()) => written += 1,
                Err((index, e)) => return Err(self.chunk_error(index, e)),
            }
        }
        file.sync_all().map_err(|e| Error::io("syncing", path, e))?;
        Ok(MaterializeReport {
            image_size: self.size(),
            chunks_written: written,
            holes,
            bytes_fetched: self.inner.counters.bytes_fetched.load(Relaxed) - before,
            elapsed_ms: t0.elapsed().as_millis() as u64,
        })
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

/// Fetches, verifies and decrypts one chunk; retries once from the lower
/// tiers when bytes from a trusted tier turn out bad.
async fn load(inner: &Arc<Inner>, index: u64) -> Result<Bytes, ChunkError> {
    let Some(chunk) = inner.table.chunks[index as usize].clone() else {
        return Err(ChunkError::TaskFailed("hole fetched".into()));
    };
    let expected = inner.table.chunk_len(index);
    let c = &inner.counters;
    let t0 = Instant::now();
    let mut retried = false;
    loop {
        let t_fetch = Instant::now();
        let timeout = inner.opts.fetch_timeout;
        let fetched = match tokio::time::timeout(timeout, inner.source.fetch(&chunk.name)).await {
            Ok(Ok(f)) => f,
            other => {
                c.chunk_errors.fetch_add(1, Relaxed);
                let err = match other {
                    Ok(Err(e)) => ChunkError::Fetch(e),
                    _ => ChunkError::Timeout { after: timeout },
                };
                log_chunk_error(inner, index, &chunk, &err);
                return Err(err);
            }
        };
        c.tier_fetched(
            &fetched.tier.label,
            fetched.bytes.len() as u64,
            t_fetch.elapsed(),
        );
        let check = !fetched.tier.trusted || inner.opts.verify == Verify::Always;
        let label = fetched.tier.label.clone();
        // The source may need the ciphertext after opening (to fill L1), so
        // decryption works on a copy when the bytes are shared.
        let ct = fetched.bytes.clone();
        let key_ref = chunk.clone();
        let provider = inner.opts.crypto;
        let opened = tokio::task::spawn_blocking(move || {
            crypto::open(provider, &key_ref, ct, check, &label)
        })
        .await
        .map_err(|e| ChunkError::TaskFailed(e.to_string()))
        .and_then(|r| r);
        let err = match opened {
            Ok(plain)
                if plain.len() == expected || plain.len() == inner.table.chunk_size as usize =>
            {
                let mut plain = plain;
                plain.truncate(expected);
                c.chunks_fetched.fetch_add(1, Relaxed);
                c.chunk_latency.record(t0.elapsed());
                if set_bit(&inner.seen, index) {
                    c.distinct_chunks_fetched.fetch_add(1, Relaxed);
                }
                inner.source.accepted(&chunk.name, &fetched).await;
                return Ok(Bytes::from(plain));
            }
            Ok(plain) => ChunkError::WrongLength {
                expected,
                actual: plain.len(),
            },
            Err(e) => e,
        };
        c.verify_failures.fetch_add(1, Relaxed);
        log_chunk_error(inner, index, &chunk, &err);
        // Bad bytes must not stay in a cache tier.
        inner.source.invalidate(&chunk.name).await;
        if fetched.tier.trusted && !retried {
            retried = true;
            continue;
        }
        c.chunk_errors.fetch_add(1, Relaxed);
        return Err(err);
    }
}

/// The one log line an operator needs to find a bad chunk: its name, index,
/// image offset, the tier that answered (or that none did) and the whole
/// error chain (the top-level message alone is often just "fetch failed").
fn log_chunk_error(inner: &Inner, index: u64, chunk: &ChunkRef, err: &ChunkError) {
    tracing::error!(
        chunk = %chunk.name,
        chunk_index = index,
        offset = index * u64::from(inner.table.chunk_size),
        tier = error_tier(err),
        error = %ErrorChain(err),
        "chunk unavailable"
    );
}

/// Which tier a chunk error came from, as far as the error tells.
fn error_tier(err: &ChunkError) -> &str {
    use crate::error::SourceError;
    match err {
        ChunkError::Fetch(SourceError::Tier { tier, .. })
        | ChunkError::NameMismatch { tier, .. }
        | ChunkError::Decrypt { tier, .. } => tier,
        ChunkError::Fetch(SourceError::NotFound { .. }) => "none (in no tier)",
        ChunkError::Timeout { .. } => "none (no answer)",
        _ => "unknown",
    }
}

/// Displays an error and its sources, `: `-separated.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            let msg = e.to_string();
            // Many errors already print their source; don't say it twice.
            if !last.ends_with(&msg) {
                write!(f, ": {msg}")?;
            }
            last = msg;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod chunk_log_tests {
    use super::*;
    use crate::error::SourceError;

    #[test]
    fn chain_names_the_tier_and_the_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = ChunkError::Fetch(SourceError::Tier {
            tier: "store".into(),
            source: Box::new(io),
        });
        assert_eq!(error_tier(&err), "store");
        assert_eq!(
            ErrorChain(&err).to_string(),
            "fetch failed: tier store failed: no such file"
        );
        let missing = ChunkError::Fetch(SourceError::NotFound {
            name: chunk_core::ChunkName::from_bytes([1; 32]),
        });
        assert_eq!(error_tier(&missing), "none (in no tier)");
        assert!(ErrorChain(&missing).to_string().contains(&"01".repeat(32)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chunk_core::{ChunkKey, ChunkName};
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::error::SourceError;
    use crate::source::{Fault, MemorySource, TierId};

    const CS: u32 = 4096;

    /// Random image whose chunks listed in `holes` are all zero.
    fn image_bytes(size: usize, holes: &[u64], seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut data: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
        for &h in holes {
            let start = h as usize * CS as usize;
            let end = (start + CS as usize).min(size);
            data[start..end].fill(0);
        }
        data
    }

    fn seal_into(data: &[u8], source: &MemorySource) -> ChunkTable {
        let chunks = chunk_core::Chunker::new(CS as usize)
            .expect("chunk size")
            .split(data)
            .map(|c| match c.data {
                chunk_core::ChunkData::Hole { .. } => None,
                chunk_core::ChunkData::Data(c) => {
                    let sealed = chunk_core::seal(
                        &chunk_core::RustCrypto,
                        &chunk_core::Salt::new(1, [7; 32]),
                        c,
                    )
                    .expect("seal");
                    let r = sealed.chunk_ref();
                    source.insert(r.name, Bytes::from(sealed.ciphertext));
                    Some(r)
                }
            })
            .collect();
        ChunkTable {
            image_size: data.len() as u64,
            chunk_size: CS,
            chunks,
        }
    }

    fn setup(
        size: usize,
        holes: &[u64],
        tier: TierId,
        opts: LazyImageOptions,
    ) -> (Vec<u8>, Arc<MemorySource>, LazyImage) {
        let data = image_bytes(size, holes, 7);
        let source = Arc::new(MemorySource::new(tier));
        let table = seal_into(&data, &source);
        let image = LazyImage::new(table, source.clone(), opts).expect("valid table");
        (data, source, image)
    }

    fn name_of(image: &LazyImage, index: u64) -> ChunkName {
        image.inner.table.chunks[index as usize]
            .as_ref()
            .expect("not a hole")
            .name
    }

    fn no_readahead() -> LazyImageOptions {
        LazyImageOptions::default().readahead_chunks(0)
    }

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

    #[tokio::test]
    async fn corrupted_remote_chunk_fails_naming_the_chunk() {
        let (_data, source, image) = setup(
            6 * CS as usize,
            &[],
            TierId::untrusted("store"),
            no_readahead(),
        );
        let bad = name_of(&image, 3);
        source.set_fault(bad, Some(Fault::Corrupt));
        let mut buf = vec![0u8; 10];
        let err = image
            .read_at(3 * u64::from(CS) + 5, &mut buf)
            .await
            .unwrap_err();
        match &err {
            Error::Chunk {
                index,
                name,
                offset,
                source,
            } => {
                assert_eq!((*index, *name, *offset), (3, bad, 3 * u64::from(CS)));
                assert!(
                    matches!(**source, ChunkError::NameMismatch { .. }),
                    "{source:?}"
                );
            }
            other => panic!("unexpected error {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("chunk 3") && text.contains(&bad.to_hex()),
            "{text}"
        );
        // Neighbours still read; the error is counted.
        assert_eq!(image.read_at(0, &mut buf).await.unwrap(), 10);
        let s = image.stats();
        assert_eq!(
            (s.read_errors, s.chunk_errors, s.verify_failures),
            (1, 1, 1)
        );
        // Once the store is repaired the chunk reads (errors are not cached).
        source.set_fault(bad, None);
        assert_eq!(
            image.read_at(3 * u64::from(CS), &mut buf).await.unwrap(),
            10
        );
    }

    #[tokio::test]
    async fn wrong_key_missing_chunk_and_unreachable_store_are_errors() {
        let (_data, source, image) = setup(
            4 * CS as usize,
            &[],
            TierId::untrusted("store"),
            no_readahead(),
        );
        // Wrong key: a table with the right names but other keys.
        let mut table = image.inner.table.clone();
        for c in table.chunks.iter_mut().flatten() {
            c.key = ChunkKey::from_bytes([9; 32]);
        }
        let wrong = LazyImage::new(table, source.clone(), no_readahead()).unwrap();
        let mut buf = vec![0u8; 10];
        let err = wrong.read_at(0, &mut buf).await.unwrap_err();
        assert!(
            matches!(&err, Error::Chunk { index: 0, source, .. } if matches!(**source, ChunkError::Decrypt { .. })),
            "{err:?}"
        );

        source.remove(&name_of(&image, 1));
        let err = image.read_at(u64::from(CS), &mut buf).await.unwrap_err();
        assert!(
            matches!(&err, Error::Chunk { index: 1, source, .. }
            if matches!(&**source, ChunkError::Fetch(SourceError::NotFound { .. }))),
            "{err:?}"
        );

        source.set_fault(name_of(&image, 2), Some(Fault::Unavailable));
        let err = image
            .read_at(2 * u64::from(CS), &mut buf)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Chunk { index: 2, source, .. }
            if matches!(&**source, ChunkError::Fetch(SourceError::Tier { .. }))),
            "{err:?}"
        );
    }

    /// A trusted tier (L1) that returns corrupted bytes until invalidated.
    struct FlakyL1 {
        inner: MemorySource,
        bad: Mutex<bool>,
    }

    #[async_trait::async_trait]
    impl ChunkSource for FlakyL1 {
        async fn fetch(&self, name: &ChunkName) -> Result<crate::Fetched, SourceError> {
            let mut f = self.inner.fetch(name).await?;
            if *lock(&self.bad) {
                let mut v = f.bytes.to_vec();
                v[0] ^= 1;
                f.bytes = Bytes::from(v);
                f.tier = TierId::trusted("disk");
            }
            Ok(f)
        }
        async fn invalidate(&self, _name: &ChunkName) {
            *lock(&self.bad) = false;
        }
    }

    #[tokio::test]
    async fn bad_bytes_from_trusted_tier_are_invalidated_and_refetched() {
        let data = image_bytes(2 * CS as usize, &[], 3);
        let mem = MemorySource::new(TierId::untrusted("store"));
        let table = seal_into(&data, &mem);
        let source = Arc::new(FlakyL1 {
            inner: mem,
            bad: Mutex::new(true),
        });
        let image = LazyImage::new(table, source.clone(), no_readahead()).unwrap();
        let mut buf = vec![0u8; CS as usize];
        assert_eq!(image.read_at(0, &mut buf).await.unwrap(), CS as usize);
        assert_eq!(&buf[..], &data[..CS as usize]);
        let s = image.stats();
        assert_eq!(
            (s.verify_failures, s.chunk_errors, s.chunks_fetched),
            (1, 0, 1)
        );
        assert_eq!(s.tiers["disk"].chunks, 1);
        assert_eq!(s.tiers["store"].chunks, 1);
    }

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn materialize_writes_the_image_with_sparse_holes() {
        let size = 40 * CS as usize + 5;
        let holes: Vec<u64> = (10..30).collect();
        let (data, _source, image) =
            setup(size, &holes, TierId::untrusted("store"), no_readahead());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.ext4");
        std::fs::write(&path, vec![1u8; size * 2]).unwrap();
        let report = image.materialize(&path, 4).await.unwrap();
        assert_eq!(
            (report.chunks_written, report.holes, report.image_size),
            (21, 20, size as u64)
        );
        let back = std::fs::read(&path).unwrap();
        assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            allocated < size as u64 - 10 * u64::from(CS),
            "holes are sparse: {allocated} bytes allocated"
        );
        // The pull bypassed the plaintext cache.
        assert_eq!(image.stats().plaintext_hits, 0);
        assert!(lock(&image.inner.cache).lru.is_empty());
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
    async fn a_hanging_store_fails_the_read_after_the_timeout() {
        let data = image_bytes(2 * CS as usize, &[], 4);
        let source = Arc::new(
            MemorySource::new(TierId::untrusted("store")).with_latency(Duration::from_secs(30)),
        );
        let table = seal_into(&data, &source);
        let opts = no_readahead().fetch_timeout(Duration::from_millis(100));
        let image = LazyImage::new(table, source, opts).unwrap();
        let t0 = Instant::now();
        let mut buf = vec![0u8; 10];
        let err = image.read_at(0, &mut buf).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(&err, Error::Chunk { index: 0, source, .. } if matches!(**source, ChunkError::Timeout { .. })),
            "{err:?}"
        );
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
