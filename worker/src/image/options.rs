//! Tuning of a [`LazyImage`](super::LazyImage): cache, readahead,
//! verification, recording, crypto backend, fetch timeout.

use std::time::Duration;

use chunk_core::CryptoProvider;

#[cfg(doc)]
use super::{BLOCK_SIZE, BlockRun, LazyImage};
#[cfg(doc)]
use crate::ChunkError;

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
