//! A node of the L2 fleet: one memcached server.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_memcached::{AsciiProtocol, Client, Status};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use crate::{CacheKey, Error, Result, Tier};

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
    /// After a failed connect, fail operations at once for this long
    /// instead of paying a connect attempt each (0 = always try).
    pub down_backoff: Duration,
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
/// interrupted is dropped, not returned to the pool. After a failed connect
/// the node is marked down for
/// [`down_backoff`](MemcachedConfig::down_backoff): operations then fail at
/// once with [`Error::NodeDown`] instead of each waiting for a connect
/// attempt. Keys are `<key_prefix><storage name>`.
pub struct MemcachedNode {
    name: String,
    addr: String,
    /// The client's data source name (`tcp://host:port` or `unix://path`).
    dsn: String,
    config: MemcachedConfig,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
    /// Until when the node counts as down after a failed connect.
    down_until: Mutex<Option<Instant>>,
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
        Self {
            dsn,
            name: addr.clone(),
            permits: Semaphore::new(config.max_connections.max(1)),
            addr,
            config,
            idle: Mutex::new(Vec::new()),
            down_until: Mutex::new(None),
        }
    }

    /// Renames the node (its rendezvous identity in an
    /// [`ErasureCodedTier`](crate::ErasureCodedTier) is its name, so keep
    /// names stable when addresses change).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    fn down_until(&self) -> Option<Instant> {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_down_until(&self, t: Option<Instant>) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    fn mark_down(&self) {
        if !self.config.down_backoff.is_zero() {
            self.set_down_until(Some(Instant::now() + self.config.down_backoff));
        }
    }

    /// Whether the node is marked down after a failed connect.
    pub fn is_down(&self) -> bool {
        self.down_until().is_some_and(|t| Instant::now() < t)
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
        let work = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| Error::InvalidConfig {
                    reason: "memcached pool closed".into(),
                })?;
            let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let client = match pooled {
                Some(c) if !c.is_closed() => c,
                _ => {
                    if let Some(until) = self.down_until()
                        && Instant::now() < until
                    {
                        return Err(Error::NodeDown {
                            node: self.name.clone(),
                            key: key.to_owned(),
                            for_: until - Instant::now(),
                        });
                    }
                    match tokio::time::timeout(self.config.connect_timeout, Client::new(&self.dsn))
                        .await
                    {
                        Ok(Ok(c)) => {
                            self.set_down_until(None);
                            c
                        }
                        Ok(Err(e)) => {
                            self.mark_down();
                            return Err(self.err(key, "connect", e));
                        }
                        Err(_) => {
                            self.mark_down();
                            return Err(Error::Timeout {
                                tier: self.name.clone(),
                                key: key.to_owned(),
                                op: "connect",
                                after: self.config.connect_timeout,
                            });
                        }
                    }
                }
            };
            let (client, r) = f(client).await;
            // Protocol answers (not found, not stored) leave the connection in
            // sync; I/O and parse errors may not, and the client closes itself.
            let reusable = !client.is_closed()
                && matches!(&r, Ok(_) | Err(async_memcached::Error::Protocol(_)));
            if reusable {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(client);
            }
            r.map_err(|e| self.err(key, op, e))
        };
        match tokio::time::timeout(self.config.op_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                tier: self.name.clone(),
                key: key.to_owned(),
                op,
                after: self.config.op_timeout,
            }),
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
}
