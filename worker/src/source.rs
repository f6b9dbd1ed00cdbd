//! Where sealed chunks come from.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chunk_core::{ChunkData, ChunkName, Salt};

use crate::ChunkTable;
use crate::error::SourceError;

/// Which tier answered a fetch, and whether its bytes were already verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TierId {
    /// Short label used in stats and logs (`"memory"`, `"disk"`, `"memcached"`, `"store"`).
    pub label: String,
    /// `true` only for a tier that holds bytes the worker itself verified
    /// before storing them (the local L1). For such bytes the worker may
    /// skip the name check; AES-GCM still authenticates every byte, so a
    /// corrupted L1 entry gives an error, never wrong data.
    pub trusted: bool,
}

impl TierId {
    /// A tier whose bytes must be checked against the chunk name (L2, L3).
    pub fn untrusted(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            trusted: false,
        }
    }

    /// A local tier filled only with verified bytes (L1).
    pub fn trusted(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            trusted: true,
        }
    }
}

/// Sealed bytes of one chunk and the tier they came from.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The ciphertext as stored.
    pub bytes: Bytes,
    /// The tier that answered.
    pub tier: TierId,
}

/// A source of sealed chunks by name, usually a tiered cache (L1 → L2 → L3).
///
/// Contract: `fetch` returns the bytes stored under `name` or an error; it
/// never needs to verify them (the worker does). After the worker found the
/// bytes of a tier to be bad it calls `invalidate`, and a tiered source should
/// then drop that entry from its caches so the next fetch goes to the authority.
/// Implementations must be cheap to share (`Arc`) and safe to call concurrently.
#[async_trait]
pub trait ChunkSource: Send + Sync + 'static {
    /// Fetches the sealed bytes of a chunk.
    async fn fetch(&self, name: &ChunkName) -> Result<Fetched, SourceError>;

    /// Drops a cached copy that turned out to be bad. Default: nothing.
    async fn invalidate(&self, _name: &ChunkName) {}

    /// Called after the bytes of `fetched` were verified (name check for
    /// untrusted tiers) and decrypted: the moment a tiered source may fill
    /// its trusted tiers, so they only ever hold verified bytes. Default: nothing.
    async fn accepted(&self, _name: &ChunkName, _fetched: &Fetched) {}

    /// Whether `tier` is the authority for chunks (the store, the last
    /// tier): bad bytes from it cannot be healed by fetching again, while
    /// bad bytes from an untrusted cache (L2) are dropped and fetched from
    /// the tiers below in the same read. Default: every untrusted tier is
    /// the authority (a source with one tier).
    fn is_authority(&self, tier: &TierId) -> bool {
        !tier.trusted
    }
}

/// Faults a [`MemorySource`] can inject, for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Flip one byte of the returned ciphertext.
    Corrupt,
    /// Answer with a tier error.
    Unavailable,
}

/// An in-memory chunk source for tests and benchmarks.
///
/// Answers as one tier with the given label; can add a fixed latency per
/// fetch, inject faults and counts fetches per chunk.
#[derive(Debug)]
pub struct MemorySource {
    chunks: Mutex<HashMap<ChunkName, Bytes>>,
    faults: Mutex<HashMap<ChunkName, Fault>>,
    fetches: Mutex<HashMap<ChunkName, u64>>,
    tier: TierId,
    latency: Duration,
}

impl MemorySource {
    /// An empty source answering as `tier`.
    pub fn new(tier: TierId) -> Self {
        Self {
            chunks: Mutex::default(),
            faults: Mutex::default(),
            fetches: Mutex::default(),
            tier,
            latency: Duration::ZERO,
        }
    }

    /// Adds a fixed delay to every fetch (simulates a remote store).
    #[must_use]
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Stores sealed bytes under a name.
    pub fn insert(&self, name: ChunkName, bytes: Bytes) {
        lock(&self.chunks).insert(name, bytes);
    }

    /// Removes a chunk.
    pub fn remove(&self, name: &ChunkName) {
        lock(&self.chunks).remove(name);
    }

    /// The sealed bytes stored under a name (without counting a fetch).
    pub fn get(&self, name: &ChunkName) -> Option<Bytes> {
        lock(&self.chunks).get(name).cloned()
    }

    /// Cuts `data` into chunks of `chunk_size`, seals each under `salt`
    /// (chunk-core's Rust backend) and stores the ciphertexts; all-zero
    /// chunks become holes, as a push makes them. Returns the table that
    /// serves the image from this source: how tests, examples and benchmarks
    /// get a sealed image without a store.
    ///
    /// Fails when `chunk_size` is not a chunk size chunk-core accepts.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use chunk_core::Salt;
    /// use worker::{LazyImage, LazyImageOptions, MemorySource, TierId};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    /// let source = Arc::new(MemorySource::new(TierId::untrusted("store")));
    /// let table = source.insert_image(&data, 4096, &Salt::new(1, [7; 32]))?;
    /// assert_eq!((table.chunks.len(), source.len()), (3, 3));
    /// let image = LazyImage::new(table, source, LazyImageOptions::default())?;
    /// let mut buf = vec![0u8; data.len()];
    /// image.read_at(0, &mut buf).await?;
    /// assert!(buf == data);
    /// # Ok(())
    /// # }
    /// ```
    pub fn insert_image(
        &self,
        data: &[u8],
        chunk_size: u32,
        salt: &Salt,
    ) -> Result<ChunkTable, chunk_core::Error> {
        let chunker = chunk_core::Chunker::new(chunk_size as usize)?;
        let mut chunks = Vec::with_capacity(chunker.chunk_count(data.len() as u64) as usize);
        for chunk in chunker.split(data) {
            chunks.push(match chunk.data {
                ChunkData::Hole { .. } => None,
                ChunkData::Data(plain) => {
                    let sealed = chunk_core::seal(&chunk_core::RustCrypto, salt, plain)?;
                    let r = sealed.chunk_ref();
                    self.insert(r.name, Bytes::from(sealed.ciphertext));
                    Some(r)
                }
            });
        }
        Ok(ChunkTable {
            image_size: data.len() as u64,
            chunk_size,
            chunks,
        })
    }

    /// Injects a fault for one chunk (`None` clears it).
    pub fn set_fault(&self, name: ChunkName, fault: Option<Fault>) {
        let mut faults = lock(&self.faults);
        match fault {
            Some(f) => faults.insert(name, f),
            None => faults.remove(&name),
        };
    }

    /// How often a chunk was fetched.
    pub fn fetch_count(&self, name: &ChunkName) -> u64 {
        lock(&self.fetches).get(name).copied().unwrap_or(0)
    }

    /// Total fetches of all chunks.
    pub fn total_fetches(&self) -> u64 {
        lock(&self.fetches).values().sum()
    }

    /// Number of stored chunks.
    pub fn len(&self) -> usize {
        lock(&self.chunks).len()
    }

    /// Whether no chunk is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl ChunkSource for MemorySource {
    async fn fetch(&self, name: &ChunkName) -> Result<Fetched, SourceError> {
        *lock(&self.fetches).entry(*name).or_default() += 1;
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let fault = lock(&self.faults).get(name).copied();
        if fault == Some(Fault::Unavailable) {
            return Err(SourceError::Tier {
                tier: self.tier.label.clone(),
                source: "injected fault: tier unavailable".into(),
            });
        }
        let bytes = lock(&self.chunks)
            .get(name)
            .cloned()
            .ok_or(SourceError::NotFound { name: *name })?;
        let bytes = if fault == Some(Fault::Corrupt) {
            let mut v = bytes.to_vec();
            if let Some(b) = v.first_mut() {
                *b ^= 0x40;
            }
            Bytes::from(v)
        } else {
            bytes
        };
        Ok(Fetched {
            bytes,
            tier: self.tier.clone(),
        })
    }
}

/// Locks a mutex, ignoring poisoning: our critical sections leave data consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
