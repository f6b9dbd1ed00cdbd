//! A node of the L2 fleet: one memcached server.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_memcached::{AsciiProtocol, Client, Status};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use crate::{CacheKey, Claim, Error, Result, Tier};

/// Settings of a [`MemcachedNode`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemcachedConfig {
    /// Most connections open to the server at once (the pool size).
    pub max_connections: usize,
    /// Limit of one operation, waiting for a connection included.
    pub op_timeout: Duration,
    /// Limit of connecting.
    pub connect_timeout: Duration,
    /// Expiry of stored items in seconds (0 = never; memcached evicts LRU anyway).
    pub ttl_secs: i64,
    /// Put before every key (a namespace shared by all users of the fleet).
    pub key_prefix: String,
    /// Circuit breaker: once the node is marked down (a failed connect, or
    /// [`failure_threshold`](Self::failure_threshold) failed or timed-out
    /// operations in a row), operations fail at once; after this long a
    /// background probe asks the server for its version, and only a probe
    /// that answers marks the node up again (0 = no breaker, always try).
    pub down_backoff: Duration,
    /// Longest wait between probes of a down node: each failed probe doubles
    /// the wait, from [`down_backoff`](Self::down_backoff) up to this.
    pub max_down_backoff: Duration,
    /// Failed or timed-out operations in a row that mark the node down
    /// (a failed connect marks it down at once). Protocol answers (not
    /// found, not stored) are not failures.
    pub failure_threshold: u32,
}

impl Default for MemcachedConfig {
    fn default() -> Self {
        Self {
            max_connections: 4,
            op_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            ttl_secs: 0,
            key_prefix: String::new(),
            down_backoff: Duration::from_millis(250),
            max_down_backoff: Duration::from_secs(5),
            failure_threshold: 2,
        }
    }
}

impl MemcachedConfig {
    /// Sets the operation and connect timeouts.
    pub fn with_timeouts(mut self, op: Duration, connect: Duration) -> Self {
        self.op_timeout = op;
        self.connect_timeout = connect;
        self
    }

    /// Sets the pool size.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets the key prefix (a namespace on a shared fleet).
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets how long a node that refused a connection is skipped.
    pub fn with_down_backoff(mut self, d: Duration) -> Self {
        self.down_backoff = d;
        self
    }

    /// Sets the longest wait between probes of a down node.
    pub fn with_max_down_backoff(mut self, d: Duration) -> Self {
        self.max_down_backoff = d;
        self
    }

    /// Sets how many failed or timed-out operations in a row mark the node down.
    pub fn with_failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n.max(1);
        self
    }

    /// Sets the item expiry in seconds (0 = never).
    pub fn with_ttl_secs(mut self, ttl: i64) -> Self {
        self.ttl_secs = ttl;
        self
    }
}

/// A [`Tier`] over one memcached server, through a small pool of connections
/// of the `async-memcached` client.
///
/// Every operation has a timeout. A connection that saw an error or was
/// interrupted is dropped, not returned to the pool.
///
/// **Circuit breaker**: a failed connect, or
/// [`failure_threshold`](MemcachedConfig::failure_threshold) operations in a
/// row that failed or timed out (a hung server that accepts connections but
/// never answers), mark the node down: operations then fail at once with
/// [`Error::NodeDown`] instead of each waiting for a timeout. After
/// [`down_backoff`](MemcachedConfig::down_backoff) the next operation (still
/// failing at once) starts one background probe (`version`, within the
/// timeouts); a probe that answers marks the node up, a failed one doubles
/// the wait up to [`max_down_backoff`](MemcachedConfig::max_down_backoff).
/// No caller ever waits for a probe. State changes are logged once each (a
/// WARN when the node goes down, an INFO when it comes back), never per
/// operation. Probing spawns a task, so operations must run inside a tokio
/// runtime. Keys are `<key_prefix><storage name>`.
pub struct MemcachedNode {
    name: String,
    addr: String,
    /// The client's data source name (`tcp://host:port` or `unix://path`).
    dsn: String,
    config: MemcachedConfig,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
    /// The circuit breaker, shared with probe tasks.
    health: Arc<Health>,
}

/// The circuit breaker of one node.
#[derive(Debug)]
struct Health {
    name: String,
    dsn: String,
    config: MemcachedConfig,
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Failed or timed-out operations in a row.
    failures: u32,
    /// `Some` while the node is down: when the next probe may start.
    down_until: Option<Instant>,
    /// The wait before the next probe.
    backoff: Duration,
    /// A probe is running.
    probing: bool,
}

/// Why an operation counted against a node.
enum Failure<'a> {
    /// The connect failed or timed out: down at once.
    Connect(&'a Error),
    /// An operation failed or timed out.
    Op(&'a Error),
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enabled(&self) -> bool {
        !self.config.down_backoff.is_zero()
    }

    /// `Some(wait)` when the node is down (operations fail at once); starts
    /// a background probe when the wait is over and none is running.
    fn check(self: &Arc<Self>) -> Option<Duration> {
        let mut st = self.lock();
        let until = st.down_until?;
        let now = Instant::now();
        if now >= until && !st.probing {
            st.probing = true;
            drop(st);
            let health = Arc::clone(self);
            tokio::spawn(async move { health.probe().await });
            return Some(Duration::ZERO);
        }
        Some(until.saturating_duration_since(now))
    }

    fn is_down(&self) -> bool {
        self.lock().down_until.is_some()
    }

    fn success(&self) {
        let mut st = self.lock();
        st.failures = 0;
    }

    fn failure(&self, why: Failure<'_>) {
        if !self.enabled() {
            return;
        }
        let mut st = self.lock();
        st.failures = st.failures.saturating_add(1);
        let (trip, error) = match why {
            Failure::Connect(e) => (true, e),
            Failure::Op(e) => (st.failures >= self.config.failure_threshold.max(1), e),
        };
        if trip && st.down_until.is_none() {
            st.backoff = self.config.down_backoff;
            st.down_until = Some(Instant::now() + st.backoff);
            drop(st);
            tracing::warn!(
                node = %self.name,
                error = error as &dyn std::error::Error,
                retry_in = ?self.config.down_backoff,
                "memcached node marked down; skipping it until a probe answers"
            );
        }
    }

    /// Asks the server for its version on a fresh connection.
    async fn probe(self: Arc<Self>) {
        let answered = async {
            let mut c = tokio::time::timeout(self.config.connect_timeout, Client::new(&self.dsn))
                .await
                .ok()?
                .ok()?;
            tokio::time::timeout(self.config.op_timeout, c.version())
                .await
                .ok()?
                .ok()
        }
        .await
        .is_some();
        let mut st = self.lock();
        st.probing = false;
        if answered {
            let was_down = st.down_until.take().is_some();
            st.failures = 0;
            drop(st);
            if was_down {
                tracing::info!(node = %self.name, "memcached node answers again; marked up");
            }
        } else {
            let max = self.config.max_down_backoff.max(self.config.down_backoff);
            st.backoff = (st.backoff * 2).min(max).max(self.config.down_backoff);
            st.down_until = Some(Instant::now() + st.backoff);
        }
    }
}

impl std::fmt::Debug for MemcachedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedNode")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MemcachedNode {
    /// A node for the server at `addr` (`host:port`, `tcp://host:port` or
    /// `unix://path`). Connects lazily.
    pub fn new(addr: impl Into<String>, config: MemcachedConfig) -> Self {
        let addr = addr.into();
        let dsn = if addr.contains("://") {
            addr.clone()
        } else {
            format!("tcp://{addr}")
        };
        let health = Arc::new(Health {
            name: addr.clone(),
            dsn: dsn.clone(),
            config: config.clone(),
            state: Mutex::default(),
        });
        Self {
            dsn,
            name: addr.clone(),
            permits: Semaphore::new(config.max_connections.max(1)),
            addr,
            config,
            idle: Mutex::new(Vec::new()),
            health,
        }
    }

    /// Renames the node (its rendezvous identity in an
    /// [`ErasureCodedTier`](crate::ErasureCodedTier) is its name, so keep
    /// names stable when addresses change).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self.health = Arc::new(Health {
            name: self.name.clone(),
            dsn: self.dsn.clone(),
            config: self.config.clone(),
            state: Mutex::default(),
        });
        self
    }

    /// Whether the node is marked down (its circuit breaker is open): until
    /// a background probe answers, operations fail at once.
    pub fn is_down(&self) -> bool {
        self.health.is_down()
    }

    fn down_err(&self, key: &str, for_: Duration) -> Error {
        Error::NodeDown {
            node: self.name.clone(),
            key: key.to_owned(),
            for_,
        }
    }

    /// The server address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn key_of<K: CacheKey>(&self, key: &K) -> String {
        format!("{}{}", self.config.key_prefix, key.storage_name())
    }

    fn err(&self, key: &str, op: &'static str, source: async_memcached::Error) -> Error {
        Error::Memcached {
            node: self.name.clone(),
            key: key.to_owned(),
            op,
            source: Box::new(source),
        }
    }

    /// Runs `f` on a pooled connection within the op timeout. `f` takes the
    /// client and hands it back with the result, so a connection is reused
    /// only after an operation that finished cleanly.
    async fn with_conn<T, F>(&self, key: &str, op: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(
            Client,
        )
            -> BoxFuture<'static, (Client, std::result::Result<T, async_memcached::Error>)>,
    {
        if let Some(wait) = self.health.check() {
            return Err(self.down_err(key, wait));
        }
        // Set once the request is on the wire: a timeout before that was
        // spent waiting for a pooled connection (local congestion), which
        // says nothing about the server.
        let sent = AtomicBool::new(false);
        let work = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| Error::InvalidConfig {
                    reason: "memcached pool closed".into(),
                })?;
            // Marked down while this operation waited for a connection.
            if let Some(wait) = self.health.check() {
                return Err(self.down_err(key, wait));
            }
            let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let client = match pooled {
                Some(c) if !c.is_closed() => c,
                _ => {
                    match tokio::time::timeout(self.config.connect_timeout, Client::new(&self.dsn))
                        .await
                    {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            let e = self.err(key, "connect", e);
                            self.health.failure(Failure::Connect(&e));
                            return Err(e);
                        }
                        Err(_) => {
                            let e = Error::Timeout {
                                tier: self.name.clone(),
                                key: key.to_owned(),
                                op: "connect",
                                after: self.config.connect_timeout,
                            };
                            self.health.failure(Failure::Connect(&e));
                            return Err(e);
                        }
                    }
                }
            };
            sent.store(true, Relaxed);
            let (client, r) = f(client).await;
            // Protocol answers (not found, not stored) leave the connection in
            // sync; I/O and parse errors may not, and the client closes itself.
            let answered = matches!(&r, Ok(_) | Err(async_memcached::Error::Protocol(_)));
            if answered {
                self.health.success();
            }
            if answered && !client.is_closed() {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(client);
            }
            let r = r.map_err(|e| self.err(key, op, e));
            if let Err(e) = &r
                && !answered
            {
                self.health.failure(Failure::Op(e));
            }
            r
        };
        match tokio::time::timeout(self.config.op_timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                // A server that accepts connections but never answers: its
                // timeouts count as failures, so it is soon skipped.
                let e = Error::Timeout {
                    tier: self.name.clone(),
                    key: key.to_owned(),
                    op,
                    after: self.config.op_timeout,
                };
                if sent.load(Relaxed) {
                    self.health.failure(Failure::Op(&e));
                }
                Err(e)
            }
        }
    }

    /// Stores raw bytes under a raw key (tests use this to plant bad shards).
    pub async fn set_raw(&self, key: &str, value: Bytes) -> Result<()> {
        let ttl = self.config.ttl_secs;
        let k = key.to_owned();
        self.with_conn(key, "set", move |mut c| {
            Box::pin(async move {
                let r = c.set(&k, &value[..], Some(ttl), None).await;
                (c, r)
            })
        })
        .await
    }

    /// Reads raw bytes of a raw key.
    pub async fn get_raw(&self, key: &str) -> Result<Option<Bytes>> {
        let k = key.to_owned();
        self.with_conn(key, "get", move |mut c| {
            Box::pin(async move {
                let r = c
                    .get(&k)
                    .await
                    .map(|v| v.and_then(|v| v.data).map(Bytes::from));
                (c, r)
            })
        })
        .await
    }

    /// Stores raw bytes under a raw key only if the key is absent, with an
    /// expiry of `ttl_secs`: `true` if stored, `false` if the key existed.
    pub async fn add_raw(&self, key: &str, value: Bytes, ttl_secs: i64) -> Result<bool> {
        let k = key.to_owned();
        self.with_conn(key, "add", move |mut c| {
            Box::pin(async move {
                let r = match c.add(&k, &value[..], Some(ttl_secs), None).await {
                    Ok(()) => Ok(true),
                    Err(async_memcached::Error::Protocol(Status::NotStored | Status::Exists)) => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                };
                (c, r)
            })
        })
        .await
    }

    /// Deletes a raw key (absent is fine).
    pub async fn delete_raw(&self, key: &str) -> Result<()> {
        let k = key.to_owned();
        self.with_conn(key, "delete", move |mut c| {
            Box::pin(async move {
                let r = match c.delete(&k).await {
                    Err(async_memcached::Error::Protocol(Status::NotFound)) => Ok(()),
                    r => r,
                };
                (c, r)
            })
        })
        .await
    }
}

#[async_trait::async_trait]
impl<K: CacheKey> Tier<K, Bytes> for MemcachedNode {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, key: &K) -> Result<Option<Bytes>> {
        let k = self.key_of(key);
        self.get_raw(&k).await
    }

    async fn put(&self, key: &K, value: Bytes) -> Result<()> {
        let k = self.key_of(key);
        self.set_raw(&k, value).await
    }

    async fn remove(&self, key: &K) -> Result<()> {
        let k = self.key_of(key);
        self.delete_raw(&k).await
    }

    /// A memcached `add` of `fetching:<key_prefix><storage name>`, expiring
    /// after `ttl` rounded up to whole seconds, plus one: memcached's clock
    /// ticks once a second, so an item with an expiry of `n` seconds may
    /// live only a little more than `n - 1`.
    async fn claim(&self, key: &K, ttl: Duration) -> Result<Claim> {
        let k = format!("fetching:{}", self.key_of(key));
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX - 1)
            .max(1)
            + 1;
        Ok(if self.add_raw(&k, Bytes::from_static(b"1"), secs).await? {
            Claim::Won
        } else {
            Claim::Taken
        })
    }

    fn is_down(&self) -> bool {
        self.health.is_down()
    }
}
