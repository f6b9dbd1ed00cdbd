//! L1 in memory.

use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;

use crate::{CacheKey, Result, Tier};

/// Bookkeeping bytes charged per entry on top of key and value.
const ENTRY_OVERHEAD: usize = 64;

/// Values in process memory, bounded in bytes, least recently used evicted first.
///
/// An entry costs its key and value bytes plus a small fixed overhead. A value
/// larger than the whole capacity is not cached (the put succeeds).
/// Values are [`Bytes`], so a hit is a reference-count increment, not a copy.
#[derive(Debug)]
pub struct MemoryTier {
    name: String,
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    lru: LruCache<Box<[u8]>, Bytes>,
    used: usize,
}

fn cost(key: &[u8], value: &Bytes) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl MemoryTier {
    /// An empty tier holding at most `capacity_bytes`.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            name: "memory".into(),
            capacity: capacity_bytes,
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                used: 0,
            }),
        }
    }

    /// Renames the tier (for stats).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the LRU inconsistent
        // with `used` in a way that matters more than a lost entry.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes charged now (keys, values, overhead).
    pub fn used_bytes(&self) -> usize {
        self.state().used
    }

    /// The byte budget.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.state().lru.len()
    }

    /// Whether the tier is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is cached, without touching its recency.
    pub fn contains<K: CacheKey>(&self, key: &K) -> bool {
        self.state().lru.contains(key.as_bytes())
    }

    /// The value of `key` (synchronous; what [`Tier::get`] does).
    pub fn get_now(&self, key: &[u8]) -> Option<Bytes> {
        self.state().lru.get(key).cloned()
    }

    /// Stores a value (synchronous; what [`Tier::put`] does).
    pub fn put_now(&self, key: &[u8], value: Bytes) {
        let c = cost(key, &value);
        if c > self.capacity {
            return;
        }
        let mut st = self.state();
        if let Some(old) = st.lru.put(key.into(), value) {
            st.used -= cost(key, &old);
        }
        st.used += c;
        while st.used > self.capacity {
            match st.lru.pop_lru() {
                Some((k, v)) => st.used -= cost(&k, &v),
                None => break,
            }
        }
    }
}

#[async_trait::async_trait]
impl<K: CacheKey> Tier<K, Bytes> for MemoryTier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, key: &K) -> Result<Option<Bytes>> {
        Ok(self.get_now(key.as_bytes()))
    }

    async fn put(&self, key: &K, value: Bytes) -> Result<()> {
        self.put_now(key.as_bytes(), value);
        Ok(())
    }

    async fn remove(&self, key: &K) -> Result<()> {
        let mut st = self.state();
        if let Some(v) = st.lru.pop(key.as_bytes()) {
            st.used -= cost(key.as_bytes(), &v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let t = MemoryTier::new(3 * (1 + 100 + ENTRY_OVERHEAD));
        let v = Bytes::from(vec![7u8; 100]);
        t.put_now(b"a", v.clone());
        t.put_now(b"b", v.clone());
        t.put_now(b"c", v.clone());
        assert!(t.get_now(b"a").is_some()); // a is now most recent
        t.put_now(b"d", v.clone());
        assert!(t.get_now(b"b").is_none(), "b was least recently used");
        assert!(
            t.get_now(b"a").is_some() && t.get_now(b"c").is_some() && t.get_now(b"d").is_some()
        );
        assert!(t.used_bytes() <= t.capacity_bytes());
    }

    #[test]
    fn too_large_values_are_not_cached_and_replacing_keeps_accounting() {
        let t = MemoryTier::new(1000);
        t.put_now(b"big", Bytes::from(vec![0u8; 2000]));
        assert!(t.is_empty());
        t.put_now(b"k", Bytes::from_static(b"12345"));
        t.put_now(b"k", Bytes::from_static(b"1"));
        assert_eq!(t.used_bytes(), 1 + 1 + ENTRY_OVERHEAD);
    }

    proptest::proptest! {
        #[test]
        fn never_exceeds_capacity(ops in proptest::collection::vec((0u8..20, 0usize..300), 1..200)) {
            let t = MemoryTier::new(1500);
            for (k, len) in ops {
                t.put_now(&[k], Bytes::from(vec![k; len]));
                proptest::prop_assert!(t.used_bytes() <= 1500);
                if let Some(v) = t.get_now(&[k]) {
                    proptest::prop_assert_eq!(v.len(), len);
                }
            }
        }
    }
}
