//! The plaintext cache: decrypted chunks, bounded by bytes.

use bytes::Bytes;
use lru::LruCache;

/// Decrypted chunks, bounded by bytes.
pub(super) struct PlainCache {
    lru: LruCache<u64, Bytes>,
    bytes: u64,
    cap: u64,
}

impl PlainCache {
    /// An empty cache holding at most `cap` bytes.
    pub(super) fn new(cap: u64) -> Self {
        Self {
            lru: LruCache::unbounded(),
            bytes: 0,
            cap,
        }
    }

    pub(super) fn get(&mut self, index: u64) -> Option<Bytes> {
        self.lru.get(&index).cloned()
    }

    pub(super) fn contains(&self, index: u64) -> bool {
        self.lru.contains(&index)
    }

    pub(super) fn insert(&mut self, index: u64, data: Bytes) {
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

    /// Whether no chunk is cached.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }
}
