//! Mark and sweep over the store, and why it never races a push.
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
//! [`GcMode::Delete`] gc only reports what would go. Objects under `chunks/` that are
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
//! every [`HEARTBEAT`](crate::lease::HEARTBEAT) and deletes when done; a lease not rewritten for
//! [`LEASE_STALE`](crate::lease::LEASE_STALE) (by the store's clock) belongs to a dead process and is
//! ignored.
//!
//! - A push writes its lease, then lists `locks/`; while a live gc lease
//!   exists it waits (keeping its own lease). Only then does it check or
//!   upload any chunk. It deletes its lease after its manifest is written.
//! - A deleting gc writes its lease, then lists `locks/`; if a live push lease
//!   exists it removes its own lease and retries later (up to [`GcOptions::wait`]), so a
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
//! period** (a grace of 0 included).
//!
//! The grace period is the second line of defence, for a push whose lease went
//! stale (a process paused or cut off from the store for over [`LEASE_STALE`](crate::lease::LEASE_STALE)):
//! chunks it uploaded are younger than the grace period for as long as the push
//! takes less than the grace period. Listing chunks *before* manifests matters
//! here: a chunk missing from the listing is never deleted, and a listed chunk
//! whose manifest is written after the manifest listing was uploaded at most
//! one push duration before it. A push also refuses to write its manifest when
//! its own lease has not been renewed for half of [`LEASE_STALE`](crate::lease::LEASE_STALE) (it fails and
//! can be rerun), and gc stops deleting under the same condition. What remains
//! unprotected is a process that stalls for more than [`LEASE_STALE`](crate::lease::LEASE_STALE) between
//! that check and its next store request; object stores offer no fencing
//! tokens to close that.
//!
//! Ages are measured against the store's clock: the last-modified time of the
//! gc's own freshly written lease. A dry run writes nothing and uses the local
//! clock.
//!
//! **Running workers.** A worker that opened an image keeps reading the
//! chunks of the version it opened, after a push replaced it. A push keeps a
//! copy of the manifest it replaces under `retired/NAME/` (before it moves
//! the name; see [`crate::versions`]), and gc marks the chunks of every
//! version retired less than [`GcOptions::retain`] ago (default 7 days),
//! listing `retired/` after `manifests/`. Older copies are deleted with
//! their chunks.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::layout::{CHUNKS, LOCKS, MANIFESTS, PROFILES, Store};
use crate::lease::{Lease, LeaseKind, live_leases};
use crate::name::is_chunk_name;
use crate::versions::{DEFAULT_RETAIN, RETIRED, RetiredVersion};

/// Concurrent deletes.
const DELETE_CONCURRENCY: usize = 16;

/// Whether a gc run deletes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum GcMode {
    /// Report what would be collected; write nothing (no lease either).
    #[default]
    DryRun,
    /// Take a gc lease and delete.
    Delete,
}

/// Options of one gc run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GcOptions {
    /// Only unnamed chunks older than this are collected.
    pub grace: Duration,
    /// Delete or only report.
    pub mode: GcMode,
    /// With [`GcMode::Delete`]: how long to keep retrying while pushes hold leases.
    pub wait: Duration,
    /// Chunks of versions replaced less than this ago stay (workers may
    /// still read them); older retired copies are deleted.
    pub retain: Duration,
}

impl GcOptions {
    /// A dry run with this grace period.
    pub fn dry_run(grace: Duration) -> Self {
        Self {
            grace,
            mode: GcMode::DryRun,
            wait: Duration::ZERO,
            retain: DEFAULT_RETAIN,
        }
    }

    /// A deleting run with this grace period, retrying for up to `wait`
    /// while pushes are in progress.
    pub fn delete(grace: Duration, wait: Duration) -> Self {
        Self {
            grace,
            mode: GcMode::Delete,
            wait,
            retain: DEFAULT_RETAIN,
        }
    }

    /// Keeps the chunks of versions retired less than `retain` ago
    /// (default [`DEFAULT_RETAIN`], 7 days).
    pub fn retain(mut self, retain: Duration) -> Self {
        self.retain = retain;
        self
    }
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

/// What a gc run found and did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// The store.
    pub store: String,
    /// Dry run or delete.
    pub mode: GcMode,
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
    /// Profiles whose manifest is gone (collected when deleting).
    pub orphan_profiles: Vec<String>,
    /// Orphan profiles deleted by this run.
    pub profiles_deleted: u64,
    /// Retired versions kept (replaced less than `retain` ago).
    pub retired_versions: u64,
    /// Chunks kept only because a retained retired version names them.
    pub retained_chunks: u64,
    /// Retired versions past `retain` (`IMAGE/SECS-DIGEST`; deleted with `--delete`).
    pub retired_expired: Vec<String>,
    /// Retired copies deleted.
    pub retired_deleted: u64,
    /// Live push leases: those that deferred a deleting run (with
    /// `deferred`), or, in a dry run, those a deleting run would wait for.
    pub pushes_in_progress: Vec<String>,
}

/// Runs gc over `store`; see the module docs.
pub async fn gc(store: &Store, opts: &GcOptions) -> Result<GcReport> {
    let mut report = GcReport {
        store: store.url().to_string(),
        mode: opts.mode,
        grace_secs: opts.grace.as_secs(),
        ..GcReport::default()
    };
    if opts.mode == GcMode::DryRun {
        let now = SystemTime::now();
        report.pushes_in_progress = live_leases(store, LeaseKind::Push, "", now)
            .await?
            .into_iter()
            .map(|p| p.object.name)
            .collect();
        mark_and_sweep(store, opts, now, None, &mut report).await?;
        return Ok(report);
    }
    let started = Instant::now();
    let mut told = false;
    loop {
        let (mut lease, now) = Lease::write(store, LeaseKind::Gc).await?;
        let pushes = live_leases(store, LeaseKind::Push, lease.name(), now).await?;
        if pushes.is_empty() {
            lease.start_heartbeat();
            let result = mark_and_sweep(store, opts, now, Some(&lease), &mut report).await;
            lease.release().await;
            result?;
            return Ok(report);
        }
        lease.release().await;
        if started.elapsed() >= opts.wait {
            tracing::debug!(
                "{} push(es) in progress ({LOCKS}/{}); nothing deleted, run gc again later",
                pushes.len(),
                pushes[0].object.name
            );
            report.deferred = true;
            report.pushes_in_progress = pushes.into_iter().map(|p| p.object.name).collect();
            return Ok(report);
        }
        if !told {
            tracing::info!("waiting for pushes in progress to finish");
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
    let chunks = store.list_under(CHUNKS).await?;
    let profiles = store.list_under(PROFILES).await?;
    let manifests = store.list_under(MANIFESTS).await?;
    let mut marked = HashSet::new();
    let mut images: HashSet<&str> = HashSet::new();
    for m in &manifests {
        // A manifest listed but gone when read was deleted meanwhile (stores
        // replace objects atomically, so a rewrite never looks like this):
        // the image is gone, its chunks are no longer named by it. A push that
        // relies on them holds a lease, which this gc has already checked.
        let Some(bytes) = store.get_under(MANIFESTS, &m.name).await? else {
            report.manifests_vanished += 1;
            continue;
        };
        images.insert(m.name.as_str());
        let sealed =
            manifest::SealedManifest::decode(&bytes).map_err(|e| Error::GcBadManifest {
                name: m.name.clone(),
                store: store.url().to_string(),
                source: e.into(),
            })?;
        marked.extend(sealed.names().flatten().map(|n| n.to_hex()));
    }
    report.manifests = manifests.len() as u64 - report.manifests_vanished;

    // Retired versions, listed after the manifests: a push writes the copy
    // of the version it replaces before it moves the name.
    let mut retained = HashSet::new();
    for r in store.list_under(RETIRED).await? {
        let Some(version) = r
            .name
            .split_once('/')
            .and_then(|(_, obj)| RetiredVersion::parse(obj))
        else {
            report.ignored_objects += 1;
            continue;
        };
        if version.age(now) >= opts.retain {
            report.retired_expired.push(r.name);
            continue;
        }
        let Some(bytes) = store.get_under(RETIRED, &r.name).await? else {
            continue;
        };
        let sealed =
            manifest::SealedManifest::decode(&bytes).map_err(|e| Error::GcBadManifest {
                name: format!("{RETIRED}/{}", r.name),
                store: store.url().to_string(),
                source: e.into(),
            })?;
        report.retired_versions += 1;
        retained.extend(
            sealed
                .names()
                .flatten()
                .map(|n| n.to_hex())
                .filter(|n| !marked.contains(n)),
        );
    }
    report.retired_expired.sort();
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
        if retained.contains(&c.name) {
            report.live_chunks += 1;
            report.live_bytes += c.size;
            report.retained_chunks += 1;
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
                store.delete_under(CHUNKS, &c.name).await?;
                Ok::<_, Error>(c.bytes)
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect()
            .await?;
        report.deleted = deleted.len() as u64;
        report.deleted_bytes = deleted.iter().sum();
        for name in &report.orphan_profiles {
            lease.check().await?;
            store.delete_under(PROFILES, name).await?;
            report.profiles_deleted += 1;
        }
        for name in &report.retired_expired {
            lease.check().await?;
            store.delete_under(RETIRED, name).await?;
            report.retired_deleted += 1;
        }
    }
    report.chunks_collectable = doomed;
    Ok(())
}
