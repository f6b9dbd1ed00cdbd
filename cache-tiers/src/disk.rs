//! L1 on local disk.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use lru::LruCache;
use xxhash_rust::xxh3::Xxh3;

use crate::{CacheKey, Error, Result, Tier};

const MAGIC: &[u8; 4] = b"LDT1";
/// magic, key length (u32), value length (u64), checksum (u64), all little endian.
const HEADER: usize = 4 + 4 + 8 + 8;
const MAX_KEY: usize = 64 * 1024;
/// A tier rescans its directory for other tiers' files each time it has put
/// this fraction of its capacity.
const RESCAN_FRACTION: u64 = 8;

/// Files in a directory, bounded in bytes, least recently read evicted first.
///
/// - Each value is one file `objects/<hh>/<storage name>` holding a header
///   (magic, key length, value length, a 64-bit XXH3 checksum of key and
///   value), the key and the value. A read checks length and checksum; a
///   truncated or corrupt file (or one holding another key) is deleted and
///   reported as a miss, never returned.
/// - Writes go to `tmp/<pid>-<start time>.<random>` and are renamed into
///   place, so a crash leaves either the whole file or none (plus a temp file
///   that the next open removes once its writer is gone).
/// - Several `DiskTier`s, in one process or several (two daemons of one
///   host), may share a directory: opening never touches the temp files of
///   a live writer, so no fill in flight is broken, and a value is written
///   whole under its name by whichever put renames last. Each tier counts
///   what it found at open plus what it put, and each time it has put an
///   eighth of its capacity it rescans the directory, counting the files
///   others added and forgetting those they evicted, then evicts down to
///   its capacity: with N tiers of equal capacity on one directory, it holds
///   at most about the capacity plus N eighths of it. Recency is each
///   tier's own (another tier's files count as just used when found).
/// - [`DiskTier::open`] rescans the directory, so the cache survives a
///   restart; recency comes from file modification times, which reads update.
/// - A value larger than the whole capacity is not cached (the put succeeds).
#[derive(Debug, Clone)]
pub struct DiskTier {
    inner: Arc<DiskInner>,
}

#[derive(Debug)]
struct DiskInner {
    name: String,
    dir: PathBuf,
    capacity: u64,
    sync: bool,
    next_gen: AtomicU64,
    corrupt_dropped: AtomicU64,
    /// Bytes put since the directory was last rescanned for the files of
    /// other tiers sharing it.
    put_since_rescan: AtomicU64,
    index: Mutex<Index>,
}

#[derive(Debug)]
struct Index {
    lru: LruCache<Box<[u8]>, Entry>,
    used: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    generation: u64,
}

fn io_err(tier: &str, key: &str, op: &'static str, source: io::Error) -> Error {
    Error::Io {
        tier: tier.to_owned(),
        key: key.to_owned(),
        op,
        source,
    }
}

fn checksum(key: &[u8], value: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(value);
    h.digest()
}

fn header(key: &[u8], value: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&(key.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&(value.len() as u64).to_le_bytes());
    h[16..24].copy_from_slice(&checksum(key, value).to_le_bytes());
    h
}

/// A parsed header: (key length, value length, checksum).
fn parse_header(h: &[u8; HEADER]) -> Option<(usize, u64, u64)> {
    if &h[..4] != MAGIC {
        return None;
    }
    let key_len = u32::from_le_bytes(h[4..8].try_into().ok()?) as usize;
    let value_len = u64::from_le_bytes(h[8..16].try_into().ok()?);
    let sum = u64::from_le_bytes(h[16..24].try_into().ok()?);
    (key_len <= MAX_KEY).then_some((key_len, value_len, sum))
}

/// Why a file was not usable.
enum ReadOutcome {
    Hit(Bytes),
    Missing,
    Corrupt(&'static str),
}

fn read_verified(path: &Path, key: &[u8]) -> io::Result<ReadOutcome> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadOutcome::Missing),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut h = [0u8; HEADER];
    if len < HEADER as u64 {
        return Ok(ReadOutcome::Corrupt("shorter than its header"));
    }
    f.read_exact(&mut h)?;
    let Some((key_len, value_len, sum)) = parse_header(&h) else {
        return Ok(ReadOutcome::Corrupt("bad header"));
    };
    if len != HEADER as u64 + key_len as u64 + value_len {
        return Ok(ReadOutcome::Corrupt(
            "length does not match header (truncated?)",
        ));
    }
    let mut buf = vec![0u8; key_len + value_len as usize];
    f.read_exact(&mut buf)?;
    if &buf[..key_len] != key {
        return Ok(ReadOutcome::Corrupt("holds another key"));
    }
    if checksum(key, &buf[key_len..]) != sum {
        return Ok(ReadOutcome::Corrupt("checksum mismatch"));
    }
    // Recency survives restarts through the modification time; failing to
    // set it only makes eviction order after a restart less exact.
    let _ = f.set_modified(SystemTime::now());
    let mut value = Bytes::from(buf);
    Ok(ReadOutcome::Hit(value.split_off(key_len)))
}

impl DiskTier {
    /// Opens (creating if needed) a cache directory bounded to `capacity_bytes`
    /// of file content, rescanning what is there.
    ///
    /// Blocking file I/O runs on tokio's blocking pool.
    pub async fn open(dir: impl Into<PathBuf>, capacity_bytes: u64) -> Result<Self> {
        let dir = dir.into();
        let d = dir.clone();
        let scanned = tokio::task::spawn_blocking(move || scan(&d))
            .await
            .map_err(|source| Error::Task {
                tier: "disk".into(),
                key: String::new(),
                source: Box::new(source),
            })??;
        let mut index = Index {
            lru: LruCache::unbounded(),
            used: 0,
        };
        let mut generation = 0;
        for (key, size, _mtime) in scanned {
            generation += 1;
            index.used += size;
            index.lru.put(key, Entry { size, generation });
        }
        let inner = Arc::new(DiskInner {
            name: "disk".into(),
            dir,
            capacity: capacity_bytes,
            sync: false,
            next_gen: AtomicU64::new(generation + 1),
            corrupt_dropped: AtomicU64::new(0),
            put_since_rescan: AtomicU64::new(0),
            index: Mutex::new(index),
        });
        let victims = inner.evict_over_budget();
        let tier = Self { inner };
        tier.delete_files(victims).await;
        Ok(tier)
    }

    /// Renames the tier (for stats and errors). Call before sharing.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.name = name.into();
        }
        self
    }

    /// Also `fsync` each file before renaming it into place (default off:
    /// the checksum already catches torn files, and this is a cache).
    pub fn with_sync(mut self, sync: bool) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.sync = sync;
        }
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes of cached files.
    pub fn used_bytes(&self) -> u64 {
        self.inner.index().used
    }

    /// The byte budget.
    pub fn capacity_bytes(&self) -> u64 {
        self.inner.capacity
    }

    /// Whether `key` is cached (by the index; the file is checked on read).
    pub fn contains<K: CacheKey>(&self, key: &K) -> bool {
        self.inner.index().lru.contains(key.as_bytes())
    }

    /// The bytes of every cached key, most recently used first.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.inner
            .index()
            .lru
            .iter()
            .map(|(k, _)| k.to_vec())
            .collect()
    }

    /// Files found truncated or corrupt and deleted since open.
    pub fn corrupt_dropped(&self) -> u64 {
        self.inner.corrupt_dropped.load(Relaxed)
    }

    /// Where the file of `key` lives.
    pub fn path_of<K: CacheKey>(&self, key: &K) -> PathBuf {
        self.inner.path_of(key.as_bytes())
    }

    /// Brings the index in line with the directory, which other tiers (other
    /// processes) may share: files they added are counted (as most recently
    /// used), files they evicted are forgotten. Then the byte bound holds
    /// for the directory as a whole, not only for this tier's own puts.
    async fn account_shared_files(&self) {
        let inner = Arc::clone(&self.inner);
        let known: HashMap<PathBuf, Box<[u8]>> = inner
            .index()
            .lru
            .iter()
            .map(|(k, _)| (inner.path_of(k), k.clone()))
            .collect();
        let dir = inner.dir.join("objects");
        let listed = tokio::task::spawn_blocking(move || {
            let mut seen = HashSet::new();
            let mut added = Vec::new();
            for path in list_objects(&dir) {
                if known.contains_key(&path) {
                    seen.insert(path);
                } else if let Ok(Some((key, size, _))) = scan_file(&path)
                    && path.file_name().and_then(|n| n.to_str())
                        == Some(&*crate::key::default_storage_name(&key))
                {
                    added.push((key, size));
                }
            }
            let gone: Vec<Box<[u8]>> = known
                .into_iter()
                .filter(|(p, _)| !seen.contains(p))
                .map(|(_, k)| k)
                .collect();
            (added, gone)
        })
        .await;
        let Ok((added, gone)) = listed else {
            return;
        };
        let mut idx = inner.index();
        for key in gone {
            if let Some(e) = idx.lru.pop(&key) {
                idx.used -= e.size;
            }
        }
        for (key, size) in added {
            if !idx.lru.contains(&key) {
                let generation = inner.next_gen.fetch_add(1, Relaxed);
                idx.lru.put(key, Entry { size, generation });
                idx.used += size;
            }
        }
    }

    async fn delete_files(&self, victims: Vec<PathBuf>) {
        if victims.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for p in victims {
                // Already gone is fine; anything else leaves a file the next
                // rescan picks up and evicts again.
                let _ = fs::remove_file(p);
            }
        })
        .await;
    }
}

impl DiskInner {
    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// File names always use the default storage name of the key bytes, so
    /// a rescan can check a file's name against the key inside it.
    fn path_of(&self, key: &[u8]) -> PathBuf {
        let fan = xxhash_rust::xxh3::xxh3_64(key) & 0xff;
        self.dir
            .join("objects")
            .join(format!("{fan:02x}"))
            .join(&*crate::key::default_storage_name(key))
    }

    /// Pops least recently used entries until within budget; returns their paths.
    fn evict_over_budget(&self) -> Vec<PathBuf> {
        let mut victims = Vec::new();
        let mut idx = self.index();
        while idx.used > self.capacity {
            let Some((k, e)) = idx.lru.pop_lru() else {
                break;
            };
            idx.used -= e.size;
            victims.push(self.path_of(&k));
        }
        victims
    }

    /// Drops `key` from the index if it is still the entry of `generation`.
    fn forget(&self, key: &[u8], generation: u64) {
        let mut idx = self.index();
        if idx
            .lru
            .peek(key)
            .is_some_and(|e| e.generation == generation)
            && let Some(e) = idx.lru.pop(key)
        {
            idx.used -= e.size;
        }
    }
}

/// This process's start time (clock ticks after boot, field 22 of
/// `/proc/<pid>/stat`), named in its temp files so that a reused pid is not
/// mistaken for their writer.
fn own_start() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| process_start(std::process::id()).unwrap_or(0))
}

fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(19)?.parse().ok()
}

/// The name of a temp file of this process: `<pid>-<start time>.<random>`.
fn temp_name() -> String {
    format!(
        "{}-{}.{:016x}",
        std::process::id(),
        own_start(),
        fastrand::u64(..)
    )
}

/// Whether the temp file `name` may belong to a write still in flight: its
/// writer (pid and start time from the name; a name of an older version,
/// `<pid>.<random>`, has no start time) is still running.
fn temp_writer_alive(name: &str) -> bool {
    let Some((writer, _)) = name.split_once('.') else {
        return false;
    };
    let (pid, start) = match writer.split_once('-') {
        Some((pid, start)) => (pid, start.parse::<u64>().ok()),
        None => (writer, None),
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    match (process_start(pid), start) {
        (None, _) => false,
        (Some(now), Some(then)) => then == 0 || now == then,
        (Some(_), None) => true,
    }
}

/// Removes the temp files whose writer is gone (a crash mid-write). Those of
/// live processes (another `DiskTier` on this directory, in this process or
/// another) are their fills in flight and stay.
fn remove_dead_temp_files(tmp: &Path) -> io::Result<()> {
    for entry in fs::read_dir(tmp)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(temp_writer_alive) {
            let path = entry.path();
            let gone = if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match gone {
                Ok(()) => {}
                // Its writer or another opener removed it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Lists valid-looking files (header and length), removes the temp files of
/// dead writers and files that cannot be ours; returns (key, size, mtime)
/// oldest first.
/// A file found by a rescan: key bytes, file size, modification time.
type Found = (Box<[u8]>, u64, SystemTime);

fn scan(dir: &Path) -> Result<Vec<Found>> {
    let err = |op, source| io_err("disk", &dir.display().to_string(), op, source);
    fs::create_dir_all(dir.join("objects")).map_err(|e| err("create", e))?;
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).map_err(|e| err("create", e))?;
    remove_dead_temp_files(&tmp).map_err(|e| err("clean temp", e))?;
    let mut found = Vec::new();
    for fan in fs::read_dir(dir.join("objects")).map_err(|e| err("scan", e))? {
        let fan = fan.map_err(|e| err("scan", e))?;
        if !fan.file_type().map_err(|e| err("scan", e))?.is_dir() {
            continue;
        }
        for f in fs::read_dir(fan.path()).map_err(|e| err("scan", e))? {
            let f = f.map_err(|e| err("scan", e))?;
            let path = f.path();
            match scan_file(&path) {
                Ok(Some((key, size, mtime))) => {
                    let expect = crate::key::default_storage_name(&key);
                    if path.file_name().and_then(|n| n.to_str()) == Some(&*expect) {
                        found.push((key, size, mtime));
                        continue;
                    }
                    tracing::warn!(path = %path.display(), "cache file under the wrong name; deleting");
                }
                Ok(None) => {
                    tracing::warn!(path = %path.display(), "truncated or foreign cache file; deleting")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable cache file; deleting")
                }
            }
            let _ = fs::remove_file(&path);
        }
    }
    found.sort_by_key(|(_, _, m)| *m);
    Ok(found)
}

/// Every file under `objects/<fan>/` (unreadable directories are skipped:
/// this only refreshes accounting).
fn list_objects(objects: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(fans) = fs::read_dir(objects) else {
        return out;
    };
    for fan in fans.flatten() {
        if fan.file_type().is_ok_and(|t| t.is_dir())
            && let Ok(files) = fs::read_dir(fan.path())
        {
            out.extend(files.flatten().map(|f| f.path()));
        }
    }
    out
}

fn scan_file(path: &Path) -> io::Result<Option<Found>> {
    let mut f = fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() < HEADER as u64 {
        return Ok(None);
    }
    let mut h = [0u8; HEADER];
    f.read_exact(&mut h)?;
    let Some((key_len, value_len, _)) = parse_header(&h) else {
        return Ok(None);
    };
    if meta.len() != HEADER as u64 + key_len as u64 + value_len {
        return Ok(None);
    }
    let mut key = vec![0u8; key_len];
    f.read_exact(&mut key)?;
    Ok(Some((key.into(), meta.len(), meta.modified()?)))
}

#[async_trait::async_trait]
impl<K: CacheKey> Tier<K, Bytes> for DiskTier {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn get(&self, key: &K) -> Result<Option<Bytes>> {
        let generation = match self.inner.index().lru.get(key.as_bytes()) {
            Some(e) => e.generation,
            None => return Ok(None),
        };
        let inner = Arc::clone(&self.inner);
        let kb: Box<[u8]> = key.as_bytes().into();
        let name = key.storage_name().into_owned();
        let path = inner.path_of(&kb);
        let p = path.clone();
        let k2 = kb.clone();
        let outcome = tokio::task::spawn_blocking(move || read_verified(&p, &k2))
            .await
            .map_err(|source| Error::Task {
                tier: inner.name.clone(),
                key: name.clone(),
                source: Box::new(source),
            })?
            .map_err(|e| io_err(&inner.name, &name, "read", e))?;
        match outcome {
            ReadOutcome::Hit(v) => Ok(Some(v)),
            ReadOutcome::Missing => {
                inner.forget(&kb, generation);
                Ok(None)
            }
            ReadOutcome::Corrupt(why) => {
                tracing::warn!(tier = %inner.name, key = %name, why, "dropping corrupt cache file");
                inner.corrupt_dropped.fetch_add(1, Relaxed);
                inner.forget(&kb, generation);
                let _ = tokio::task::spawn_blocking(move || fs::remove_file(path)).await;
                Ok(None)
            }
        }
    }

    async fn put(&self, key: &K, value: Bytes) -> Result<()> {
        let kb = key.as_bytes();
        let size = (HEADER + kb.len() + value.len()) as u64;
        if size > self.inner.capacity || kb.len() > MAX_KEY {
            return Ok(());
        }
        if self.inner.index().lru.contains(kb) {
            return Ok(()); // immutable values: already there
        }
        let inner = Arc::clone(&self.inner);
        let kb: Box<[u8]> = kb.into();
        let name = key.storage_name().into_owned();
        let path = inner.path_of(&kb);
        let tmp = inner.dir.join("tmp").join(temp_name());
        let sync = inner.sync;
        let k2 = kb.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let write = || -> io::Result<()> {
                let mut f = fs::File::create(&tmp)?;
                f.write_all(&header(&k2, &value))?;
                f.write_all(&k2)?;
                f.write_all(&value)?;
                if sync {
                    f.sync_all()?;
                }
                drop(f);
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::rename(&tmp, &path)
            };
            let r = write();
            if r.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            r
        })
        .await
        .map_err(|source| Error::Task {
            tier: inner.name.clone(),
            key: name.clone(),
            source: Box::new(source),
        })?
        .map_err(|e| io_err(&inner.name, &name, "write", e))?;
        {
            let mut idx = inner.index();
            let generation = inner.next_gen.fetch_add(1, Relaxed);
            if let Some(old) = idx.lru.put(kb, Entry { size, generation }) {
                idx.used -= old.size;
            }
            idx.used += size;
        }
        let written = inner.put_since_rescan.fetch_add(size, Relaxed) + size;
        if written >= inner.capacity / RESCAN_FRACTION {
            inner.put_since_rescan.store(0, Relaxed);
            self.account_shared_files().await;
        }
        let victims = inner.evict_over_budget();
        self.delete_files(victims).await;
        Ok(())
    }

    async fn remove(&self, key: &K) -> Result<()> {
        let popped = {
            let mut idx = self.inner.index();
            let e = idx.lru.pop(key.as_bytes());
            if let Some(e) = &e {
                idx.used -= e.size;
            }
            e
        };
        let path = self.path_of(key);
        let name = key.storage_name().into_owned();
        let r = tokio::task::spawn_blocking(move || fs::remove_file(path))
            .await
            .map_err(|source| Error::Task {
                tier: self.inner.name.clone(),
                key: name.clone(),
                source: Box::new(source),
            })?;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                tracing::warn!(tier = %self.inner.name, key = %name, was_indexed = popped.is_some(), "remove failed");
                Err(io_err(&self.inner.name, &name, "remove", e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_file_contents_are_never_a_hit(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300), magic: bool) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("f");
            let mut raw = body.clone();
            if magic && raw.len() >= 4 {
                raw[..4].copy_from_slice(MAGIC);
            }
            fs::write(&p, &raw).unwrap();
            proptest::prop_assert!(!matches!(read_verified(&p, b"k").unwrap(), ReadOutcome::Hit(_)));
            proptest::prop_assert!(scan_file(&p).is_ok());
        }
    }

    #[tokio::test]
    async fn corrupt_and_truncated_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let t = DiskTier::open(dir.path(), 1 << 20).await.unwrap();
        let (a, b) = ("a".to_string(), "b".to_string());
        Tier::put(&t, &a, Bytes::from(vec![1u8; 1000]))
            .await
            .unwrap();
        Tier::put(&t, &b, Bytes::from(vec![2u8; 1000]))
            .await
            .unwrap();
        // Flip one byte of a's value.
        let pa = t.path_of(&a);
        let mut raw = fs::read(&pa).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&pa, &raw).unwrap();
        // Truncate b.
        let pb = t.path_of(&b);
        let raw = fs::read(&pb).unwrap();
        fs::write(&pb, &raw[..raw.len() - 10]).unwrap();
        assert_eq!(Tier::get(&t, &a).await.unwrap(), None);
        assert_eq!(Tier::get(&t, &b).await.unwrap(), None);
        assert_eq!(t.corrupt_dropped(), 2);
        assert!(!pa.exists() && !pb.exists());
        assert!(!t.contains(&a) && t.used_bytes() == 0);
    }

    #[tokio::test]
    async fn survives_reopen_and_keeps_lru_order() {
        let dir = tempfile::tempdir().unwrap();
        let entry = (HEADER + 1 + 100) as u64;
        {
            let t = DiskTier::open(dir.path(), 3 * entry).await.unwrap();
            for k in ["a", "b", "c"] {
                Tier::put(&t, &k.to_string(), Bytes::from(vec![0u8; 100]))
                    .await
                    .unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // Read a so it becomes most recent (and its mtime newest).
            assert!(Tier::get(&t, &"a".to_string()).await.unwrap().is_some());
        }
        // A leftover temp file from a crash is cleaned up.
        fs::write(dir.path().join("tmp").join("junk"), b"x").unwrap();
        let t = DiskTier::open(dir.path(), 3 * entry).await.unwrap();
        assert_eq!(t.used_bytes(), 3 * entry);
        assert!(!dir.path().join("tmp").join("junk").exists());
        Tier::put(&t, &"d".to_string(), Bytes::from(vec![0u8; 100]))
            .await
            .unwrap();
        // b is now the least recently used and was evicted.
        let mut keys = t.keys();
        keys.sort();
        assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        assert!(!t.path_of(&"b".to_string()).exists());
    }

    #[tokio::test]
    async fn opening_spares_temp_files_of_live_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DiskTier::open(dir.path(), 1 << 20).await.unwrap();
        let tmp = dir.path().join("tmp");
        // A fill of this (live) process in flight.
        let live = tmp.join(temp_name());
        fs::write(&live, b"half a value").unwrap();
        // A writer that is gone, in the old and the new naming.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead_old = tmp.join(format!("{dead_pid}.0123456789abcdef"));
        let dead_new = tmp.join(format!("{dead_pid}-12345.0123456789abcdef"));
        // This pid, but another start time: a writer whose pid was reused.
        let reused = tmp.join(format!("{}-{}.00", std::process::id(), own_start() + 1));
        let junk = tmp.join("junk");
        for p in [&dead_old, &dead_new, &reused, &junk] {
            fs::write(p, b"x").unwrap();
        }
        let _second = DiskTier::open(dir.path(), 1 << 20).await.unwrap();
        assert!(live.exists(), "a live writer's temp file was removed");
        for p in [&dead_old, &dead_new, &reused, &junk] {
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_tiers_on_one_dir_do_not_break_each_others_fills() {
        let dir = tempfile::tempdir().unwrap();
        let filler = DiskTier::open(dir.path(), 64 << 20).await.unwrap();
        let path = dir.path().to_path_buf();
        let opener = tokio::spawn(async move {
            for _ in 0..50 {
                DiskTier::open(&path, 64 << 20).await.unwrap();
            }
        });
        let value = Bytes::from(vec![7u8; 256 << 10]);
        let mut failed = Vec::new();
        for i in 0..200 {
            if let Err(e) = Tier::put(&filler, &format!("k{i}"), value.clone()).await {
                failed.push(e.to_string());
            }
        }
        opener.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} fills failed: {:?}",
            failed.len(),
            failed.first()
        );
        let reopened = DiskTier::open(dir.path(), 64 << 20).await.unwrap();
        for i in 0..200 {
            assert_eq!(
                Tier::get(&reopened, &format!("k{i}"))
                    .await
                    .unwrap()
                    .as_ref(),
                Some(&value)
            );
        }
    }

    fn bytes_under(dir: &Path) -> u64 {
        list_objects(&dir.join("objects"))
            .iter()
            .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    }

    #[tokio::test]
    async fn the_byte_bound_holds_across_tiers_sharing_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let entry = (HEADER + 3 + 1000) as u64;
        let capacity = 16 * entry;
        let a = DiskTier::open(dir.path(), capacity).await.unwrap();
        let b = DiskTier::open(dir.path(), capacity).await.unwrap();
        for i in 0..64 {
            let (t, k) = if i % 2 == 0 { (&a, "a") } else { (&b, "b") };
            Tier::put(t, &format!("{k}{i:02}"), Bytes::from(vec![1u8; 1000]))
                .await
                .unwrap();
        }
        let on_disk = bytes_under(dir.path());
        // Each tier rescans every 2 entries: 16 + 2 per tier at most.
        assert!(
            on_disk <= capacity + 2 * (capacity / RESCAN_FRACTION + entry),
            "{} entries on disk for a capacity of 16",
            on_disk / entry
        );
        // After a rescan, what each tier counts is on disk (it forgot what
        // the other evicted) and within its capacity.
        for t in [&a, &b] {
            t.account_shared_files().await;
            assert!(t.used_bytes() <= on_disk);
            for k in t.keys() {
                assert!(t.inner.path_of(&k).exists(), "{k:?} counted but gone");
            }
        }
    }
}
