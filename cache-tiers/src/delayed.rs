//! A tier wrapper that adds a fixed latency to every get.

use std::sync::Arc;
use std::time::Duration;

use crate::{Result, Tier};

/// Wraps a tier and sleeps `delay` before each [`get`](Tier::get) (hits and
/// misses alike); puts and removes pass through unchanged.
///
/// For benchmarks and fault tests: it makes a local object store behave like
/// a remote one (e.g. 20 ms per object fetch, as an S3 GET in another zone
/// might), so that prefetching and caching show their effect on one machine.
/// Keeps the inner tier's name, so stats stay comparable.
///
/// ```
/// use std::sync::Arc;
/// use std::time::{Duration, Instant};
/// use bytes::Bytes;
/// use cache_tiers::{Delayed, MemoryTier, Tier};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cache_tiers::Result<()> {
/// let slow = Delayed::new(Arc::new(MemoryTier::new(1 << 20)), Duration::from_millis(20));
/// slow.put(&"k".to_string(), Bytes::from_static(b"v")).await?;
/// let t0 = Instant::now();
/// assert_eq!(slow.get(&"k".to_string()).await?, Some(Bytes::from_static(b"v")));
/// assert!(t0.elapsed() >= Duration::from_millis(20));
/// # Ok(()) }
/// ```
pub struct Delayed<K, V> {
    inner: Arc<dyn Tier<K, V>>,
    delay: Duration,
}

impl<K: Sync, V: Send + 'static> std::fmt::Debug for Delayed<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayed")
            .field("tier", &self.inner.name())
            .field("delay", &self.delay)
            .finish()
    }
}

impl<K, V> Delayed<K, V> {
    /// Wraps `inner`, delaying each get by `delay`.
    pub fn new(inner: Arc<dyn Tier<K, V>>, delay: Duration) -> Self {
        Self { inner, delay }
    }

    /// The added latency.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

#[async_trait::async_trait]
impl<K, V> Tier<K, V> for Delayed<K, V>
where
    K: Send + Sync + 'static,
    V: Send + 'static,
{
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn get(&self, key: &K) -> Result<Option<V>> {
        tokio::time::sleep(self.delay).await;
        self.inner.get(key).await
    }

    async fn put(&self, key: &K, value: V) -> Result<()> {
        self.inner.put(key, value).await
    }

    async fn remove(&self, key: &K) -> Result<()> {
        self.inner.remove(key).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::*;
    use crate::MemoryTier;

    #[tokio::test]
    async fn gets_are_delayed_and_the_contract_holds() {
        let inner: Arc<dyn Tier<String, Bytes>> = Arc::new(MemoryTier::new(64 << 20));
        let quick = Delayed::new(inner.clone(), Duration::from_millis(1));
        crate::testing::conformance::run(Arc::new(quick), "delayed-", Default::default()).await;

        let tier = Delayed::new(inner.clone(), Duration::from_millis(30));
        assert_eq!(tier.name(), inner.name());
        assert_eq!(tier.delay(), Duration::from_millis(30));

        let key = "a".to_string();
        let t0 = Instant::now();
        tier.put(&key, Bytes::from_static(b"x")).await.unwrap();
        assert!(
            t0.elapsed() < Duration::from_millis(30),
            "puts are not delayed"
        );
        for want in [Some(Bytes::from_static(b"x")), None] {
            let t0 = Instant::now();
            assert_eq!(tier.get(&key).await.unwrap(), want);
            assert!(t0.elapsed() >= Duration::from_millis(30));
            tier.remove(&key).await.unwrap();
        }
        // Concurrent gets wait in parallel, not in a queue.
        let t0 = Instant::now();
        let gets = (0..10).map(|_| tier.get(&key));
        futures::future::join_all(gets).await;
        assert!(
            t0.elapsed() < Duration::from_millis(250),
            "{:?}",
            t0.elapsed()
        );
    }
}
