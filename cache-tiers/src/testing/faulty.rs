//! A tier wrapper that injects faults.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;

use crate::{Error, Result, Tier};

/// Wraps a tier and, on demand, fails, delays, forgets or corrupts its gets.
pub struct FaultyTier {
    inner: Arc<dyn Tier<String, Bytes>>,
    name: String,
    fail: AtomicBool,
    forget: AtomicBool,
    corrupt: AtomicBool,
    delay_us: AtomicU64,
    gets: AtomicU64,
}

impl std::fmt::Debug for FaultyTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyTier")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl FaultyTier {
    /// Wraps `inner` under a new name.
    pub fn new(inner: Arc<dyn Tier<String, Bytes>>, name: impl Into<String>) -> Self {
        Self {
            inner,
            name: name.into(),
            fail: AtomicBool::new(false),
            forget: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            gets: AtomicU64::new(0),
        }
    }
    /// Every operation fails.
    pub fn set_fail(&self, yes: bool) {
        self.fail.store(yes, Relaxed);
    }
    /// Gets miss.
    pub fn set_forget(&self, yes: bool) {
        self.forget.store(yes, Relaxed);
    }
    /// Gets return the value with its last byte flipped.
    pub fn set_corrupt(&self, yes: bool) {
        self.corrupt.store(yes, Relaxed);
    }
    /// Every operation first sleeps this long.
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Relaxed);
    }
    /// Gets received so far.
    pub fn gets(&self) -> u64 {
        self.gets.load(Relaxed)
    }

    async fn before(&self, key: &str, op: &'static str) -> Result<()> {
        let d = self.delay_us.load(Relaxed);
        if d > 0 {
            tokio::time::sleep(Duration::from_micros(d)).await;
        }
        if self.fail.load(Relaxed) {
            return Err(Error::Io {
                tier: self.name.clone(),
                key: key.to_owned(),
                op,
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Tier<String, Bytes> for FaultyTier {
    fn name(&self) -> &str {
        &self.name
    }
    async fn get(&self, key: &String) -> Result<Option<Bytes>> {
        self.gets.fetch_add(1, Relaxed);
        self.before(key, "get").await?;
        if self.forget.load(Relaxed) {
            return Ok(None);
        }
        let v = self.inner.get(key).await?;
        Ok(match v {
            Some(v) if self.corrupt.load(Relaxed) && !v.is_empty() => {
                let mut b = v.to_vec();
                let last = b.len() - 1;
                b[last] ^= 1;
                Some(Bytes::from(b))
            }
            v => v,
        })
    }
    async fn put(&self, key: &String, value: Bytes) -> Result<()> {
        self.before(key, "put").await?;
        self.inner.put(key, value).await
    }
    async fn remove(&self, key: &String) -> Result<()> {
        self.before(key, "remove").await?;
        self.inner.remove(key).await
    }
}
