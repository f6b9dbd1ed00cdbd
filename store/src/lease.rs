//! Leases: small objects `locks/push-ID` and `locks/gc-ID` that their owner
//! rewrites every [`HEARTBEAT`] and deletes when done, so a push and a gc
//! never race (see [`crate::gc`](mod@crate::gc) for the argument). A lease not rewritten for
//! [`LEASE_STALE`], by the store's clock, belongs to a dead process.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::layout::{LOCKS, Store, StoredObject};

/// How often a lease is rewritten.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A lease older than this (store clock) belongs to a dead process.
pub const LEASE_STALE: Duration = Duration::from_secs(600);

/// What holds a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseKind {
    /// A push in progress.
    Push,
    /// A gc that may delete.
    Gc,
}

impl LeaseKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Push => "push-",
            Self::Gc => "gc-",
        }
    }
}

/// A lease `locks/KIND-ID`, rewritten in the background until released.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    name: String,
    /// When the lease was last written successfully (local monotonic clock).
    renewed: Arc<Mutex<Instant>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// Writes a new lease; returns it and the store's time of the write.
    pub(crate) async fn write(store: &Store, kind: LeaseKind) -> Result<(Self, SystemTime)> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(Error::random)?;
        let lease = Self {
            store: store.clone(),
            name: format!("{}{}", kind.prefix(), hex::encode(id)),
            renewed: Arc::new(Mutex::new(Instant::now())),
            heartbeat: None,
        };
        let now = lease.renew().await?;
        Ok((lease, now))
    }

    /// Its name under `locks/`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn body() -> Bytes {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Bytes::from(format!(
            "{{\"pid\":{},\"host\":{:?},\"tool\":\"lode {}\"}}\n",
            std::process::id(),
            host.trim(),
            env!("CARGO_PKG_VERSION")
        ))
    }

    /// Rewrites the lease; returns the store's time of the write.
    pub(crate) async fn renew(&self) -> Result<SystemTime> {
        let started = Instant::now();
        let now = self
            .store
            .put_under(LOCKS, &self.name, Self::body())
            .await?;
        *self.renewed.lock().await = started;
        Ok(now)
    }

    pub(crate) fn start_heartbeat(&mut self) {
        let store = self.store.clone();
        let name = self.name.clone();
        let renewed = self.renewed.clone();
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let started = Instant::now();
                match store.put_under(LOCKS, &name, Self::body()).await {
                    Ok(_) => *renewed.lock().await = started,
                    Err(e) => tracing::warn!(
                        lease = %name,
                        error = &e as &dyn std::error::Error,
                        "renewing a lease failed"
                    ),
                }
            }
        }));
    }

    /// Fails with [`Error::LeaseStale`] when the lease may have gone stale
    /// in the others' eyes (not renewed for half of [`LEASE_STALE`]).
    pub async fn check(&self) -> Result<()> {
        let age = self.renewed.lock().await.elapsed();
        if age < LEASE_STALE / 2 {
            return Ok(());
        }
        Err(Error::LeaseStale {
            lease: self.name.clone(),
            age_secs: age.as_secs(),
        })
    }

    /// Stops the heartbeat and deletes the lease.
    pub async fn release(mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if let Err(e) = self.store.delete_under(LOCKS, &self.name).await {
            tracing::warn!(
                lease = %self.name,
                error = &e as &dyn std::error::Error,
                "deleting a lease failed; it expires by itself in {}s",
                LEASE_STALE.as_secs()
            );
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

/// Live leases of `kind` at store time `now`, other than `own`.
pub(crate) async fn live_leases(
    store: &Store,
    kind: LeaseKind,
    own: &str,
    now: SystemTime,
) -> Result<Vec<StoredObject>> {
    Ok(store
        .list_under(LOCKS)
        .await?
        .into_iter()
        .filter(|l| l.name != own && l.name.starts_with(kind.prefix()))
        .filter(|l| now.duration_since(l.last_modified).unwrap_or_default() < LEASE_STALE)
        .collect())
}

/// Takes a push lease: waits while a live gc lease exists. Call before the
/// push checks or uploads any chunk; release after its manifest is written.
pub async fn push_lease(store: &Store) -> Result<Lease> {
    let (mut lease, mut now) = Lease::write(store, LeaseKind::Push).await?;
    let mut told = false;
    loop {
        let gcs = live_leases(store, LeaseKind::Gc, &lease.name, now).await?;
        if gcs.is_empty() {
            break;
        }
        if !told {
            tracing::info!(
                "waiting for a gc to finish deleting ({LOCKS}/{} in {}; it expires {}s after its last renewal)",
                gcs[0].name,
                store.url(),
                LEASE_STALE.as_secs()
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        now = lease.renew().await?;
    }
    lease.start_heartbeat();
    Ok(lease)
}
