//! `lode gc`: mark and sweep over the store, and the leases that keep it
//! from racing a push.
//!
//! **Mark**: every chunk named by any manifest under `manifests/`, read from
//! the public part of the manifest ([`manifest::SealedManifest::decode`]); no
//! KMS is needed. An object under `manifests/` that cannot be read or decoded
//! stops gc with an error before anything is deleted: a partial mark would
//! delete live chunks. A manifest that is listed but gone when read was
//! deleted meanwhile (an image deletion); it is counted and skipped.
//!
//! **Sweep**: chunks named by no manifest whose last-modified time (as the
//! store reports it) is older than the grace period (default 24 h). Without
//! `--delete` gc only reports what would go. Objects under `chunks/` that are
//! not chunk names (64 hex digits) are never touched.
//!
//! # Why gc never deletes a chunk a push is about to name
//!
//! A push uploads the chunks the store lacks, skips those it finds already
//! stored (a `HEAD`), and writes its manifest last. Two things could go wrong:
//!
//! 1. A chunk the push **uploaded** is unreferenced until the manifest lands.
//! 2. A chunk the push found **already stored** may be an old orphan (its
//!    manifest was deleted or replaced). Its last-modified time is old, so the
//!    grace period does not protect it: gc could delete it after the push's
//!    `HEAD` and before the push writes its manifest, leaving a manifest that
//!    names a missing chunk.
//!
//! Case 2 is why age alone is not enough. lode closes it with **leases**:
//! small objects `locks/push-ID` and `locks/gc-ID` that their owner rewrites
//! every [`HEARTBEAT`] and deletes when done; a lease not rewritten for
//! [`LEASE_STALE`] (by the store's clock) belongs to a dead process and is
//! ignored.
//!
//! - A push writes its lease, then lists `locks/`; while a live gc lease
//!   exists it waits (keeping its own lease). Only then does it check or
//!   upload any chunk. It deletes its lease after its manifest is written.
//! - `gc --delete` writes its lease, then lists `locks/`; if a live push lease
//!   exists it removes its own lease and retries later (up to `--wait`), so a
//!   push never waits for more than one gc run. Holding the lease with no push
//!   live, it lists **chunks first, then manifests**, and deletes; its lease is
//!   removed after the last delete.
//!
//! Store reads are strongly consistent (S3 since 2020, local directories), so
//! of a push and a gc that overlap, whichever wrote its lease second sees the
//! other's. If the gc sees the push, it deletes nothing. If the push sees the
//! gc, it makes no `HEAD` and no upload until the gc's deletes are over, and
//! then sees the store as it is. A push that finished before the gc's lease
//! check wrote its manifest before the gc lists manifests, so its chunks are
//! marked. Hence, with live leases, **no chunk of a finished manifest, and no
//! chunk a running push relies on, is ever deleted, whatever the grace
//! period** (`--grace 0s` included).
//!
//! The grace period is the second line of defence, for a push whose lease went
//! stale (a process paused or cut off from the store for over [`LEASE_STALE`]):
//! chunks it uploaded are younger than the grace period for as long as the push
//! takes less than the grace period. Listing chunks *before* manifests matters
//! here: a chunk missing from the listing is never deleted, and a listed chunk
//! whose manifest is written after the manifest listing was uploaded at most
//! one push duration before it. A push also refuses to write its manifest when
//! its own lease has not been renewed for half of [`LEASE_STALE`] (it fails and
//! can be rerun), and gc stops deleting under the same condition. What remains
//! unprotected is a process that stalls for more than [`LEASE_STALE`] between
//! that check and its next store request; object stores offer no fencing
//! tokens to close that.
//!
//! Ages are measured against the store's clock: the last-modified time of the
//! gc's own freshly written lease. A dry run writes nothing and uses the local
//! clock.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::store::{Store, StoredObject, delete_under, list_under, put_under};

/// The directory of leases.
pub const LOCKS: &str = "locks";
/// How often a lease is rewritten.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A lease older than this (store clock) belongs to a dead process.
pub const LEASE_STALE: Duration = Duration::from_secs(600);
/// Concurrent deletes.
const DELETE_CONCURRENCY: usize = 16;

/// What holds a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
pub struct Lease {
    raw: Arc<dyn ObjectStore>,
    root: String,
    name: String,
    /// When the lease was last written successfully (local monotonic clock).
    renewed: Arc<Mutex<Instant>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    async fn write(store: &Store, kind: LeaseKind) -> Result<(Self, SystemTime)> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| anyhow!("reading the system random source: {e}"))?;
        let name = format!("{}{}", kind.prefix(), hex::encode(id));
        let lease = Self {
            raw: store.raw_store(),
            root: store.root().to_string(),
            name,
            renewed: Arc::new(Mutex::new(Instant::now())),
            heartbeat: None,
        };
        let now = lease.renew().await?;
        Ok((lease, now))
    }

    fn body(&self) -> Bytes {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Bytes::from(format!(
            "{{\"pid\":{},\"host\":{:?},\"tool\":\"lode {}\"}}\n",
            std::process::id(),
            host.trim(),
            env!("CARGO_PKG_VERSION")
        ))
    }

    /// Rewrites the lease; returns the store's time of the write.
    async fn renew(&self) -> Result<SystemTime> {
        let started = Instant::now();
        let now = put_under(
            self.raw.as_ref(),
            &self.root,
            LOCKS,
            &self.name,
            self.body(),
        )
        .await
        .with_context(|| format!("writing lease {LOCKS}/{}", self.name))?;
        *self.renewed.lock().await = started;
        Ok(now)
    }

    fn start_heartbeat(&mut self) {
        let raw = self.raw.clone();
        let root = self.root.clone();
        let name = self.name.clone();
        let renewed = self.renewed.clone();
        let body = self.body();
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let started = Instant::now();
                match put_under(raw.as_ref(), &root, LOCKS, &name, body.clone()).await {
                    Ok(_) => *renewed.lock().await = started,
                    Err(e) => eprintln!("lode: warning: renewing lease {LOCKS}/{name}: {e}"),
                }
            }
        }));
    }

    /// Fails when the lease may have gone stale in the others' eyes (not
    /// renewed for half of [`LEASE_STALE`]).
    pub async fn check(&self) -> Result<()> {
        let age = self.renewed.lock().await.elapsed();
        ensure!(
            age < LEASE_STALE / 2,
            "lease {LOCKS}/{} was last renewed {}s ago (a paused process or an unreachable store); \
             a concurrent gc may have treated it as dead, so this run stops here: run it again",
            self.name,
            age.as_secs()
        );
        Ok(())
    }

    /// Stops the heartbeat and deletes the lease.
    pub async fn release(mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if let Err(e) = delete_under(self.raw.as_ref(), &self.root, LOCKS, &self.name).await {
            eprintln!(
                "lode: warning: deleting lease {LOCKS}/{}: {e} (it expires by itself in {}s)",
                self.name,
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
async fn live_leases(
    store: &Store,
    kind: LeaseKind,
    own: &str,
    now: SystemTime,
) -> Result<Vec<StoredObject>> {
    let all = list_under(store.raw_store().as_ref(), store.root(), LOCKS)
        .await
        .with_context(|| format!("listing {LOCKS}/ in {}", store.url))?;
    Ok(all
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
            eprintln!(
                "lode: waiting for a gc to finish deleting ({LOCKS}/{} in {}; it expires {}s after its last renewal)",
                gcs[0].name,
                store.url,
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

/// Options of one gc run.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Only chunks older than this are collected.
    pub grace: Duration,
    /// Delete (otherwise report only).
    pub delete: bool,
    /// With `delete`: how long to keep retrying while pushes hold leases.
    pub wait: Duration,
}

/// A chunk that is (or would be) collected.
#[derive(Debug, Clone, Serialize)]
pub struct Collected {
    /// Chunk name (hex).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Age in seconds at the time of the run.
    pub age_secs: u64,
}

/// What a gc run found and did (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    /// The store.
    pub store: String,
    /// `"dry-run"` or `"delete"`.
    pub mode: &'static str,
    /// Grace period in seconds.
    pub grace_secs: u64,
    /// True when live pushes kept the run from deleting (nothing was deleted).
    pub deferred: bool,
    /// Manifests marked from.
    pub manifests: u64,
    /// Manifests listed but deleted before gc read them (images deleted
    /// while gc ran; their chunks count as unnamed).
    pub manifests_vanished: u64,
    /// Chunk objects in the store.
    pub chunks: u64,
    /// Their bytes.
    pub chunk_bytes: u64,
    /// Stored chunks named by at least one manifest.
    pub live_chunks: u64,
    /// Their bytes.
    pub live_bytes: u64,
    /// Distinct chunk names that manifests name but the store lacks (should be 0).
    pub missing_chunks: u64,
    /// Unnamed chunks kept because they are younger than the grace period.
    pub young_orphans: u64,
    /// Their bytes.
    pub young_orphan_bytes: u64,
    /// Objects under `chunks/` that are not chunk names (left alone).
    pub ignored_objects: u64,
    /// Unnamed chunks older than the grace period.
    pub collectable: u64,
    /// Their bytes.
    pub collectable_bytes: u64,
    /// Chunks deleted by this run.
    pub deleted: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// The collectable chunks.
    pub chunks_collectable: Vec<Collected>,
    /// Prefetch profiles (`profiles/NAME`) in the store.
    pub profiles: u64,
    /// Profiles whose manifest is gone (collected with `--delete`).
    pub orphan_profiles: Vec<String>,
    /// Orphan profiles deleted by this run.
    pub profiles_deleted: u64,
}

fn is_chunk_name(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Runs gc over `store`; see the module docs.
pub async fn gc(store: &Store, opts: &GcOptions) -> Result<GcReport> {
    let mut report = GcReport {
        store: store.url.clone(),
        mode: if opts.delete { "delete" } else { "dry-run" },
        grace_secs: opts.grace.as_secs(),
        deferred: false,
        manifests: 0,
        manifests_vanished: 0,
        chunks: 0,
        chunk_bytes: 0,
        live_chunks: 0,
        live_bytes: 0,
        missing_chunks: 0,
        young_orphans: 0,
        young_orphan_bytes: 0,
        ignored_objects: 0,
        collectable: 0,
        collectable_bytes: 0,
        deleted: 0,
        deleted_bytes: 0,
        chunks_collectable: Vec::new(),
        profiles: 0,
        orphan_profiles: Vec::new(),
        profiles_deleted: 0,
    };
    if !opts.delete {
        mark_and_sweep(store, opts, SystemTime::now(), None, &mut report).await?;
        return Ok(report);
    }
    let started = Instant::now();
    let mut told = false;
    loop {
        let (mut lease, now) = Lease::write(store, LeaseKind::Gc).await?;
        let pushes = live_leases(store, LeaseKind::Push, &lease.name, now).await?;
        if pushes.is_empty() {
            lease.start_heartbeat();
            let result = mark_and_sweep(store, opts, now, Some(&lease), &mut report).await;
            lease.release().await;
            result?;
            return Ok(report);
        }
        lease.release().await;
        if started.elapsed() >= opts.wait {
            eprintln!(
                "lode: {} push(es) in progress ({LOCKS}/{}); nothing deleted, run gc again later",
                pushes.len(),
                pushes[0].name
            );
            report.deferred = true;
            return Ok(report);
        }
        if !told {
            eprintln!("lode: waiting for pushes in progress to finish");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn mark_and_sweep(
    store: &Store,
    opts: &GcOptions,
    now: SystemTime,
    lease: Option<&Lease>,
    report: &mut GcReport,
) -> Result<()> {
    // Chunks first, then manifests: see the module docs. Profiles before
    // manifests too: a profile is saved only while its manifest exists, so
    // one listed here whose manifest is missing from the later listing
    // belongs to a deleted image.
    let chunks = store.list_under("chunks").await?;
    let profiles = store.list_under(crate::store::PROFILES).await?;
    let manifests = store.list_under("manifests").await?;
    let mut marked = HashSet::new();
    let mut images: HashSet<&str> = HashSet::new();
    for m in &manifests {
        // A manifest listed but gone when read was deleted meanwhile (stores
        // replace objects atomically, so a rewrite never looks like this):
        // the image is gone, its chunks are no longer named by it. A push that
        // relies on them holds a lease, which this gc has already checked.
        let Some(bytes) = store.get_under("manifests", &m.name).await? else {
            report.manifests_vanished += 1;
            continue;
        };
        images.insert(m.name.as_str());
        let sealed = manifest::SealedManifest::decode(&bytes).with_context(|| {
            format!(
                "manifests/{} in {} is not a valid manifest; gc stops without deleting anything \
                 (move it away or fix it)",
                m.name, store.url
            )
        })?;
        marked.extend(sealed.names().flatten().map(|n| n.to_hex()));
    }
    report.manifests = manifests.len() as u64 - report.manifests_vanished;
    report.profiles = profiles.len() as u64;
    report.orphan_profiles = profiles
        .iter()
        .filter(|p| !images.contains(p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    report.orphan_profiles.sort();

    let mut present = HashSet::new();
    let mut doomed = Vec::new();
    for c in chunks {
        if !is_chunk_name(&c.name) {
            report.ignored_objects += 1;
            continue;
        }
        report.chunks += 1;
        report.chunk_bytes += c.size;
        if marked.contains(&c.name) {
            report.live_chunks += 1;
            report.live_bytes += c.size;
            present.insert(c.name);
            continue;
        }
        let age = now.duration_since(c.last_modified).unwrap_or_default();
        if age < opts.grace {
            report.young_orphans += 1;
            report.young_orphan_bytes += c.size;
        } else {
            report.collectable += 1;
            report.collectable_bytes += c.size;
            doomed.push(Collected {
                name: c.name,
                bytes: c.size,
                age_secs: age.as_secs(),
            });
        }
    }
    report.missing_chunks = marked.iter().filter(|n| !present.contains(*n)).count() as u64;
    doomed.sort_by(|a, b| a.name.cmp(&b.name));

    if let Some(lease) = lease {
        lease.check().await?;
        let deleted: Vec<u64> = futures::stream::iter(doomed.iter())
            .map(|c| async move {
                lease.check().await?;
                store.delete_under("chunks", &c.name).await?;
                anyhow::Ok(c.bytes)
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect()
            .await?;
        report.deleted = deleted.len() as u64;
        report.deleted_bytes = deleted.iter().sum();
        for name in &report.orphan_profiles {
            lease.check().await?;
            store.delete_under(crate::store::PROFILES, name).await?;
            report.profiles_deleted += 1;
        }
    }
    report.chunks_collectable = doomed;
    Ok(())
}

/// Parses `24h`, `30m`, `90s`, `2d`, `20ms` or `0s` (a plain number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        bail!("duration {s:?} must look like 24h, 30m, 90s, 2d, 20ms or 0s");
    }
    let n: u64 = digits
        .parse()
        .with_context(|| format!("duration {s:?} is too large"))?;
    let mult_ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("duration {s:?}: unit must be ms, s, m, h or d"),
    };
    let ms = n
        .checked_mul(mult_ms)
        .with_context(|| format!("duration {s:?} is too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Human-readable report.
pub fn print_report(r: &GcReport) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "gc of {} ({}, grace {}s): {} manifests, {} chunks ({:.1} MiB)",
        r.store,
        r.mode,
        r.grace_secs,
        r.manifests,
        r.chunks,
        mib(r.chunk_bytes)
    );
    if r.manifests_vanished > 0 {
        println!(
            "  {} manifests were deleted while gc read them (skipped)",
            r.manifests_vanished
        );
    }
    if r.deferred {
        println!("  deferred: pushes in progress held leases; nothing was deleted");
        return;
    }
    println!(
        "  live      {} chunks ({:.1} MiB)",
        r.live_chunks,
        mib(r.live_bytes)
    );
    println!(
        "  young     {} unnamed chunks ({:.1} MiB) kept: younger than the grace period",
        r.young_orphans,
        mib(r.young_orphan_bytes)
    );
    if r.mode == "dry-run" {
        for c in &r.chunks_collectable {
            println!(
                "  would delete {} ({} bytes, {}s old)",
                c.name, c.bytes, c.age_secs
            );
        }
        println!(
            "  would delete {} chunks ({} bytes); run with --delete to delete them",
            r.collectable, r.collectable_bytes
        );
    } else {
        println!(
            "  deleted   {} chunks ({} bytes)",
            r.deleted, r.deleted_bytes
        );
    }
    if !r.orphan_profiles.is_empty() {
        let verb = if r.mode == "dry-run" {
            "would delete"
        } else {
            "deleted"
        };
        println!(
            "  {verb} {} prefetch profiles of deleted images: {}",
            r.orphan_profiles.len(),
            r.orphan_profiles.join(", ")
        );
    }
    if r.missing_chunks > 0 {
        println!(
            "  WARNING: {} chunks named by manifests are missing from the store",
            r.missing_chunks
        );
    }
    if r.ignored_objects > 0 {
        println!(
            "  {} objects under chunks/ are not chunk names and were left alone",
            r.ignored_objects
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("20ms").unwrap(), Duration::from_millis(20));
        for bad in ["", "h", "5w", "-1s", "1.5h", "99999999999999999999d", "5us"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunk_names() {
        assert!(is_chunk_name(&"ab".repeat(32)));
        assert!(!is_chunk_name(&"AB".repeat(32)));
        assert!(!is_chunk_name("abc"));
        assert!(!is_chunk_name(&format!("{}#1", "ab".repeat(32))));
    }
}
