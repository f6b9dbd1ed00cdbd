//! Asynchronous fills: puts go through a bounded queue, off the read path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::{Claim, Result, Tier};

type Inner = Arc<dyn Tier<String, Bytes>>;

/// Counters of a [`QueuedPuts`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Puts accepted into the queue.
    pub queued: u64,
    /// Puts dropped because the queue was full.
    pub dropped: u64,
    /// Queued puts that the inner tier stored.
    pub stored: u64,
    /// Queued puts that the inner tier failed.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    dropped: AtomicU64,
    stored: AtomicU64,
    failed: AtomicU64,
}

/// Wraps a cache tier so that [`put`](Tier::put) never waits for it: the
/// value goes into a bounded queue and returns `Ok(())` at once; a
/// background task stores queued values, at most `concurrency` at a time.
/// When the queue is full the put is dropped (counted in
/// [`QueueStats::dropped`]): a cache may lose any value, and a fill must
/// never delay a read. Gets and removes go straight to the inner tier.
///
/// For a shared cache such as the erasure-coded L2, where one slow node
/// would otherwise make every fill (and so every cold read that awaits it)
/// slow. Not for an authority: a dropped put there would lose data.
///
/// The background task is spawned on the first put (a tokio runtime is
/// needed then) and ends when the wrapper is dropped and the queue drained.
pub struct QueuedPuts {
    inner: Inner,
    capacity: usize,
    concurrency: usize,
    tx: Mutex<Option<mpsc::Sender<(String, Bytes)>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for QueuedPuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedPuts")
            .field("inner", &self.inner.name())
            .field("capacity", &self.capacity)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl QueuedPuts {
    /// Wraps `inner` with a queue of `capacity` puts, stored at most
    /// `concurrency` at a time (both at least 1).
    pub fn new(inner: Arc<dyn Tier<String, Bytes>>, capacity: usize, concurrency: usize) -> Self {
        Self {
            inner,
            capacity: capacity.max(1),
            concurrency: concurrency.max(1),
            tx: Mutex::new(None),
            counters: Arc::default(),
        }
    }

    /// The wrapped tier.
    pub fn inner(&self) -> &Arc<dyn Tier<String, Bytes>> {
        &self.inner
    }

    /// Counters so far.
    pub fn queue_stats(&self) -> QueueStats {
        let c = &self.counters;
        QueueStats {
            queued: c.queued.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            stored: c.stored.load(Relaxed),
            failed: c.failed.load(Relaxed),
        }
    }

    fn sender(&self) -> mpsc::Sender<(String, Bytes)> {
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tx.as_ref().filter(|t| !t.is_closed()) {
            return tx.clone();
        }
        let (sender, rx) = mpsc::channel::<(String, Bytes)>(self.capacity);
        let inner = Arc::clone(&self.inner);
        let counters = Arc::clone(&self.counters);
        let concurrency = self.concurrency;
        tokio::spawn(async move {
            tokio_stream_of(rx)
                .for_each_concurrent(concurrency, |(key, value)| {
                    let inner = Arc::clone(&inner);
                    let counters = Arc::clone(&counters);
                    async move {
                        match inner.put(&key, value).await {
                            Ok(()) => counters.stored.fetch_add(1, Relaxed),
                            Err(e) => {
                                tracing::debug!(
                                    tier = inner.name(),
                                    error = &e as &dyn std::error::Error,
                                    "queued fill failed"
                                );
                                counters.failed.fetch_add(1, Relaxed)
                            }
                        };
                    }
                })
                .await;
        });
        *tx = Some(sender.clone());
        sender
    }
}

/// A stream of what `rx` receives, ending when every sender is gone.
fn tokio_stream_of<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[async_trait::async_trait]
impl Tier<String, Bytes> for QueuedPuts {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn get(&self, key: &String) -> Result<Option<Bytes>> {
        self.inner.get(key).await
    }

    async fn put(&self, key: &String, value: Bytes) -> Result<()> {
        match self.sender().try_send((key.clone(), value)) {
            Ok(()) => self.counters.queued.fetch_add(1, Relaxed),
            Err(_) => self.counters.dropped.fetch_add(1, Relaxed),
        };
        Ok(())
    }

    async fn remove(&self, key: &String) -> Result<()> {
        self.inner.remove(key).await
    }

    async fn claim(&self, key: &String, ttl: std::time::Duration) -> Result<Claim> {
        self.inner.claim(key, ttl).await
    }

    fn is_down(&self) -> bool {
        self.inner.is_down()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::MemoryTier;

    /// A tier whose puts never finish (a hung node).
    #[derive(Default)]
    struct Stalled;

    #[async_trait::async_trait]
    impl Tier<String, Bytes> for Stalled {
        fn name(&self) -> &str {
            "stalled"
        }
        async fn get(&self, _key: &String) -> Result<Option<Bytes>> {
            Ok(None)
        }
        async fn put(&self, _key: &String, _value: Bytes) -> Result<()> {
            std::future::pending().await
        }
        async fn remove(&self, _key: &String) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_put_never_waits_for_a_stalled_tier_and_a_full_queue_drops() {
        let stalled = Arc::new(Stalled);
        let q = QueuedPuts::new(stalled.clone(), 4, 1);
        let t0 = Instant::now();
        for i in 0..10 {
            Tier::put(&q, &format!("k{i}"), Bytes::from_static(b"v"))
                .await
                .unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        let s = q.queue_stats();
        // One put is taken by the worker (stalled), four wait in the queue.
        assert!(s.queued <= 5 && s.dropped >= 5, "{s:?}");
        assert_eq!(s.queued + s.dropped, 10);
    }

    #[tokio::test]
    async fn queued_puts_are_stored() {
        let mem = Arc::new(MemoryTier::new(1 << 20));
        let q = QueuedPuts::new(mem.clone(), 16, 2);
        let key = "k".to_string();
        Tier::put(&q, &key, Bytes::from_static(b"v")).await.unwrap();
        let t0 = Instant::now();
        while Tier::get(&q, &key).await.unwrap().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(5), "never stored");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(q.queue_stats().stored, 1);
        assert_eq!(Tier::<String, Bytes>::name(&q), "memory");
    }
}
