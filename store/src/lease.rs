//! Leases: small objects `locks/push-ID` and `locks/gc-ID` that their owner
//! rewrites every [`HEARTBEAT`] and deletes when done, so a push and a gc
//! never race (see [`crate::gc`](mod@crate::gc) for the argument). A lease not rewritten for
//! [`LEASE_STALE`], by the store's clock, belongs to a dead process. A lease
//! written on this very boot of this host (same kernel boot id) by a process
//! that is gone (no such pid, or a pid reused by a process started later) is
//! stale at once: a killed push no longer delays gc by ten minutes.

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
        let pid = std::process::id();
        let body = LeaseBody {
            pid,
            host: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
            tool: format!("lode {}", env!("CARGO_PKG_VERSION")),
            boot_id: boot_id(),
            start_ticks: start_ticks(pid),
        };
        let mut json = serde_json::to_vec(&body).unwrap_or_default();
        json.push(b'\n');
        Bytes::from(json)
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

/// What a lease object holds: who wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseBody {
    /// The writer's process id.
    pub pid: u32,
    /// The writer's host name.
    pub host: String,
    /// The writing tool and its version.
    pub tool: String,
    /// The writer host's kernel boot id (`/proc/sys/kernel/random/boot_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The writer's start time in clock ticks since boot (`/proc/PID/stat`
    /// field 22): tells a reused pid from the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
}

impl LeaseBody {
    /// Whether the writer is known to be gone: it ran on this boot of this
    /// host and no process with its pid and start time runs now. A lease of
    /// another host or boot (or an older lode that wrote no boot id) is never
    /// known gone; it goes stale by age.
    pub fn writer_is_gone(&self) -> bool {
        let (Some(theirs), Some(ours)) = (&self.boot_id, boot_id()) else {
            return false;
        };
        if *theirs != ours {
            return false;
        }
        match (start_ticks(self.pid), self.start_ticks) {
            (None, _) => true,                      // no such process
            (Some(now), Some(then)) => now != then, // the pid was reused
            (Some(_), None) => false,
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// This boot's id.
fn boot_id() -> Option<String> {
    read_trimmed("/proc/sys/kernel/random/boot_id").filter(|s| !s.is_empty())
}

/// When process `pid` started (clock ticks since boot), if it runs.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything;
    // fields after its last ')' are plain: state is field 3, start time 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A live lease: its object and, when readable, who wrote it.
#[derive(Debug, Clone)]
pub struct LiveLease {
    /// The lease object under `locks/`.
    pub object: StoredObject,
    /// Its body, when it parsed.
    pub body: Option<LeaseBody>,
}

/// Live leases of `kind` at store time `now`, other than `own`: written
/// less than [`LEASE_STALE`] ago, by a writer not known to be gone.
pub(crate) async fn live_leases(
    store: &Store,
    kind: LeaseKind,
    own: &str,
    now: SystemTime,
) -> Result<Vec<LiveLease>> {
    let young: Vec<StoredObject> = store
        .list_under(LOCKS)
        .await?
        .into_iter()
        .filter(|l| l.name != own && l.name.starts_with(kind.prefix()))
        .filter(|l| now.duration_since(l.last_modified).unwrap_or_default() < LEASE_STALE)
        .collect();
    let mut live = Vec::with_capacity(young.len());
    for object in young {
        // Deleted since the listing: released.
        let Some(bytes) = store.get_under(LOCKS, &object.name).await? else {
            continue;
        };
        // An unreadable body is kept live: only a known-dead writer frees it.
        let body: Option<LeaseBody> = serde_json::from_slice(&bytes).ok();
        if body.as_ref().is_some_and(LeaseBody::writer_is_gone) {
            tracing::info!(
                lease = %object.name,
                "ignoring a lease whose process on this host is gone"
            );
            continue;
        }
        live.push(LiveLease { object, body });
    }
    Ok(live)
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
                gcs[0].object.name,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(pid: u32) -> LeaseBody {
        LeaseBody {
            pid,
            host: "h".into(),
            tool: "lode test".into(),
            boot_id: boot_id(),
            start_ticks: start_ticks(pid),
        }
    }

    #[test]
    fn a_lease_of_this_boot_is_gone_exactly_when_its_process_is() {
        assert!(boot_id().is_some(), "Linux has a boot id");
        // This process: alive.
        let me = body_of(std::process::id());
        assert!(me.start_ticks.is_some());
        assert!(!me.writer_is_gone());
        // A child that has exited and been reaped: gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let mut dead = body_of(pid);
        child.wait().unwrap();
        dead.start_ticks = Some(1);
        assert!(dead.writer_is_gone());
        // Our pid with another start time: a reused pid, the writer is gone.
        let mut reused = body_of(std::process::id());
        reused.start_ticks = reused.start_ticks.map(|t| t + 1);
        assert!(reused.writer_is_gone());
        // Another boot (or host), or an older lode's body: never known gone.
        let mut other = dead.clone();
        other.boot_id = Some("another-boot".into());
        assert!(!other.writer_is_gone());
        let mut old = dead;
        old.boot_id = None;
        assert!(!old.writer_is_gone());
    }

    #[test]
    fn the_start_time_of_a_running_process_is_read_and_a_missing_one_is_none() {
        // Our own stat line parses; field 22 is a number of ticks.
        assert!(start_ticks(std::process::id()).is_some());
        assert_eq!(start_ticks(u32::MAX), None);
    }

    #[test]
    fn a_body_without_boot_fields_still_parses() {
        let b: LeaseBody =
            serde_json::from_str(r#"{"pid":7,"host":"x","tool":"lode 0.1.0"}"#).unwrap();
        assert_eq!((b.pid, b.boot_id, b.start_ticks), (7, None, None));
    }
}
