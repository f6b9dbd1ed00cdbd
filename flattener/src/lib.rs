//! Flattens OCI images into deterministic, dedup-friendly read-only ext4
//! images.
//!
//! An image (`oci:DIR[:TAG]`, `docker-archive:FILE`, or with the `registry`
//! feature `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`) is read through an
//! [`oci::ImageSource`]; its layers are decompressed (gzip, zstd or plain),
//! verified (blob digest and `rootfs.diff_ids`) and parsed in parallel,
//! file contents go to an on-disk spool ([`FileSpool`]), and the layers are
//! applied with the OCI/containerd rules into a [`tree::Tree`] that holds
//! metadata only. The ext4 writer then serializes the tree.
//!
//! Main entry points: [`ImageRef::parse`], [`build_tree`] (image → tree +
//! spool), [`flatten`] (image → ext4 file), [`flatten_to_writer`] (image →
//! ext4 stream) and [`image_ids`] (UUID and hash seed derived from the
//! layers' content).
//!
//! ```
//! use flattener::oci::MemorySource;
//! use flattener::{build_tree, write_flattened, FlattenOptions, ImageRef};
//!
//! // `lode flatten` does `flatten(&ImageRef::parse("oci:DIR:TAG")?, &opts, out)`;
//! // here, an image of one empty layer held in memory.
//! let r = ImageRef::parse("oci:/images/layout:python")?;
//! assert_eq!(r.to_string(), "oci:/images/layout:python");
//! let source = MemorySource::from_tars(vec![vec![0u8; 1024]]);
//! let opts = FlattenOptions::default();
//! let flat = build_tree(&source, &opts, &std::env::temp_dir())?;
//! let mut image = Vec::new();
//! let (summary, sha256) = write_flattened(&flat, opts.deleted_data, &mut image)?;
//! assert_eq!(summary.size_bytes, image.len() as u64);
//! assert_eq!(image.len() % (512 * 1024), 0);
//! assert_eq!(sha256.len(), 64);
//! # Ok::<(), flattener::Error>(())
//! ```
//!
//! # Layout
//!
//! The image starts with the superblock chunk, then one data region per
//! layer (each on a 512 KiB chunk boundary, depending only on the layers up
//! to it, so a base layer's chunks are the same in every image built on
//! it), then metadata. With a [`HotList`] ([`FlattenOptions::with_hot`],
//! profile-guided layout), a hot region sits between the last layer region
//! and the metadata: copies of the blocks a recorded start read, in the
//! order they were read, plus the directories it looked up. Files' extents
//! point at the copies; the layer regions keep every byte (the cold copies
//! are merely free in the bitmap), so dedup across images is unaffected
//! whatever the profile. Details in the [`ext4`] module docs.
//!
//! ```
//! use flattener::{FlattenOptions, HotEntry, HotList};
//!
//! let hot = HotList {
//!     entries: vec![
//!         HotEntry { path: b"/usr/bin/python3.11".to_vec(), blocks: vec![(0, 64), (300, 8)] },
//!         HotEntry::whole(b"/usr/lib/python3.11".to_vec()), // a directory: all its blocks
//!     ],
//! };
//! let opts = FlattenOptions::default().with_hot(&hot);
//! assert!(opts.hot.is_some());
//! ```
//!
//! Features: `registry` (off by default) adds the `docker://` source
//! (`oci::Registry`, via `oci-client`; [`RegistryOptions`] says how the
//! registry is reached). gzip uses flate2 with the pure-Rust zlib-rs
//! backend, zstd uses ruzstd (pure Rust).
//!
//! Errors ([`Error`]) say what failed and where; the cause is returned from
//! [`source()`](std::error::Error::source), never repeated in the message.
//!
//! Layer semantics and the choices made where the spec leaves room are
//! documented in the crate README (`flattener/README.md`).

pub mod error;
pub mod ext4;
mod layers;
pub mod oci;
mod tar;
pub mod tree;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use sha2::{Digest as _, Sha256};

pub use error::{Error, LayerError, Result};
pub use ext4::{HotEntry, HotList, HotRegion};
pub use layers::FileSpool;
pub use oci::{Digest, ImageRef, ImageSource, Platform, RegistryOptions, RunConfig};

/// What [`build_tree`] and the flatten functions report while they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// What is happening.
    pub phase: Phase,
    /// Compressed layer bytes read so far (all layers).
    pub bytes_read: u64,
    /// Compressed size of all layers (0 if the source does not know).
    pub bytes_total: u64,
    /// Number of layers.
    pub layers: usize,
}

/// The phases of a flatten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Reading, verifying and spooling layers.
    Reading,
    /// Applying the layers to the tree.
    Applying,
    /// Writing the ext4 image.
    Writing,
}

/// Options of a flatten.
#[non_exhaustive]
pub struct FlattenOptions<'a> {
    /// The platform the image must be built for: it picks from a
    /// multi-platform index, and a single image whose config names another
    /// os or architecture is an error (as with `docker pull --platform`).
    /// `None` (the default): `linux/amd64` from an index, a single image
    /// whatever its platform.
    pub platform: Option<Platform>,
    /// Called now and then from worker threads.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// Layers read at once (0 = number of CPUs). The output never depends on it.
    pub threads: usize,
    /// Where the spool goes (default: the output file's directory; the
    /// system temp directory for [`flatten_to_writer`]).
    pub spool_dir: Option<PathBuf>,
    /// What the image keeps of file data an upper layer deleted or
    /// replaced. Default [`ext4::DeletedData::Keep`]: it keeps a base
    /// layer's chunks identical in every image built on it (measured in
    /// the crate README); the bytes are in the image's layers anyway.
    pub deleted_data: ext4::DeletedData,
    /// Profile-guided layout: copies of these blocks go, in this order, to
    /// a hot region after the layer regions; the layer regions stay
    /// byte-identical to a flatten without a list. Default `None`.
    pub hot: Option<&'a HotList>,
    /// How a `docker://` image's registry is reached (TLS, credentials).
    pub registry: RegistryOptions,
}

impl Default for FlattenOptions<'_> {
    fn default() -> Self {
        Self {
            platform: None,
            progress: None,
            threads: 0,
            spool_dir: None,
            deleted_data: ext4::DeletedData::Keep,
            hot: None,
            registry: RegistryOptions::default(),
        }
    }
}

impl<'a> FlattenOptions<'a> {
    /// These options with this progress callback.
    pub fn with_progress(mut self, f: &'a (dyn Fn(Progress) + Sync)) -> Self {
        self.progress = Some(f);
        self
    }

    /// These options with this treatment of deleted data.
    pub fn with_deleted_data(mut self, d: ext4::DeletedData) -> Self {
        self.deleted_data = d;
        self
    }

    /// These options with this platform, which the image must be built for.
    pub fn with_platform(mut self, p: Platform) -> Self {
        self.platform = Some(p);
        self
    }

    /// These options reaching a registry with `registry`.
    pub fn with_registry(mut self, registry: RegistryOptions) -> Self {
        self.registry = registry;
        self
    }

    /// These options with this hot list (profile-guided layout).
    pub fn with_hot(mut self, hot: &'a HotList) -> Self {
        self.hot = Some(hot);
        self
    }
}

/// An image applied into a tree, its contents in a spool.
#[derive(Debug)]
pub struct Flattened {
    /// The filesystem tree.
    pub tree: tree::Tree,
    /// File contents, per layer.
    pub spool: FileSpool,
    /// The layers' uncompressed digests, bottom first.
    pub diff_ids: Vec<Digest>,
    /// Per layer, a digest of its content that ignores tar entry order,
    /// compression and archive format (see [`image_ids`]).
    pub content_ids: Vec<Digest>,
    /// The image config's digest.
    pub config_digest: Digest,
    /// The platform the image config names, if any.
    pub platform: Option<Platform>,
    /// How the image config says the image runs.
    pub run_config: RunConfig,
    /// Compressed layer bytes read.
    pub bytes_read: u64,
}

/// The filesystem UUID and directory hash seed for an image, derived from
/// per-layer content digests ([`Flattened::content_ids`]).
///
/// A layer's content digest hashes its entries sorted by path (operation,
/// metadata, XXH3-128 of the data). Like the diff_id it identifies the
/// layer's content, so the same layers give the same image whether they
/// arrive compressed or not, from an OCI layout or a docker-archive; unlike
/// the diff_id it does not change when only the tar entry order does, so
/// the whole image is independent of entry order.
pub fn image_ids(content_ids: &[Digest]) -> ([u8; 16], [u8; 16]) {
    let derive = |purpose: &[u8]| {
        let mut h = Sha256::new();
        h.update(b"lode-flattener\0");
        h.update(purpose);
        for d in content_ids {
            h.update(b"\0");
            h.update(d.as_str().as_bytes());
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        out
    };
    let mut uuid = derive(b"uuid");
    // An RFC 9562 version 8 (custom) UUID.
    uuid[6] = (uuid[6] & 0x0f) | 0x80;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    (uuid, derive(b"hash_seed"))
}

fn threads(opts: &FlattenOptions<'_>) -> usize {
    if opts.threads > 0 {
        opts.threads
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// Files a flatten keeps open besides one spool per layer: the layer blobs
/// being read, the output, its temp file, stdio and the caller's own.
const OPEN_FILES_BESIDES_SPOOLS: u64 = 64;

/// Fails early, with a clear error, when `layers` spool files would not fit
/// under the process's open-file limit (often 1024): otherwise a deep image
/// fails halfway with EMFILE on whichever file comes next.
fn check_open_files(layers: usize) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(()); // unknown: let the flatten try
    }
    let limit = lim.rlim_cur;
    if limit != libc::RLIM_INFINITY && layers as u64 + OPEN_FILES_BESIDES_SPOOLS > limit {
        return Err(Error::TooManyLayers { layers, limit });
    }
    Ok(())
}

/// Reads every layer of `source` and applies them into a tree. File
/// contents go to anonymous temporary files in `spool_dir`.
pub fn build_tree(
    source: &dyn ImageSource,
    opts: &FlattenOptions<'_>,
    spool_dir: &Path,
) -> Result<Flattened> {
    let image = source.resolve(&opts.platform.clone().unwrap_or_default())?;
    if let (Some(wanted), Some(built)) = (&opts.platform, &image.platform)
        && !wanted.runs(built)
    {
        return Err(Error::Image {
            source_name: source.name(),
            reason: format!("the image is built for {built}, not for {wanted}"),
        });
    }
    check_open_files(image.layers.len())?;
    let total: u64 = image.layers.iter().filter_map(|l| l.size).sum();
    let n = image.layers.len();
    let report = |phase: Phase, read: u64| {
        if let Some(p) = opts.progress {
            p(Progress {
                phase,
                bytes_read: read,
                bytes_total: total,
                layers: n,
            });
        }
    };
    let notify = |read: u64| report(Phase::Reading, read);
    let counter = layers::Counter {
        read: std::sync::atomic::AtomicU64::new(0),
        notify: &notify,
    };
    let parsed = layers::read_layers(source, &image.layers, spool_dir, threads(opts), &counter)?;
    let read = counter.read.load(Ordering::Relaxed);
    report(Phase::Applying, read);
    let mut builder = layers::Builder::new();
    let mut spools = Vec::with_capacity(n);
    let mut content_ids = Vec::with_capacity(n);
    for (i, (layer, desc)) in parsed.into_iter().zip(&image.layers).enumerate() {
        let (spool, content) = builder.apply(layer).map_err(|e| Error::Layer {
            index: i,
            blob: desc.name.clone(),
            source: e,
        })?;
        spools.push(spool);
        content_ids.push(content);
    }
    Ok(Flattened {
        tree: builder.finish(),
        spool: FileSpool { layers: spools },
        diff_ids: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
        content_ids,
        config_digest: image.config_digest,
        platform: image.platform,
        run_config: image.run_config,
        bytes_read: read,
    })
}

/// What a flatten produced.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FlattenSummary {
    /// Image size in bytes.
    pub size: u64,
    /// SHA-256 of the image, lowercase hex.
    pub sha256: String,
    /// Number of layers applied.
    pub layers: usize,
    /// Nodes (inodes) in the tree, the root included.
    pub nodes: usize,
    /// Directory entries (names) in the tree, the root excluded.
    pub entries: usize,
    /// The layers' uncompressed digests, bottom first.
    pub diff_ids: Vec<Digest>,
    /// The image config's digest.
    pub config_digest: Digest,
    /// The platform the image config names, if any.
    pub platform: Option<Platform>,
    /// How the image config says the image runs.
    pub run_config: RunConfig,
    /// The ext4 writer's report (layout, data regions).
    pub image: ext4::ImageSummary,
}

/// Hands what the ext4 writer produces to a thread that hashes it and
/// writes it out, so the writer (the sequential part of a flatten) only
/// plans and copies; tolerates only seeks that do not move.
struct ThreadedWriter {
    pending: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<std::sync::Arc<Vec<u8>>>>,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pos: u64,
}

const OUT_BATCH: usize = 1 << 20;

impl ThreadedWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.pending, Vec::with_capacity(OUT_BATCH));
        match &self.tx {
            Some(tx) if !self.failed.load(Ordering::Relaxed) => tx
                .send(std::sync::Arc::new(full))
                .map_err(|_| io::Error::other("output thread stopped")),
            _ => Err(io::Error::other("output thread stopped")),
        }
    }
}

impl Write for ThreadedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= OUT_BATCH {
            self.send()?;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Seek for ThreadedWriter {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(_) => None,
        };
        if target == Some(self.pos) {
            Ok(self.pos)
        } else {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the image is written sequentially",
            ))
        }
    }
}

/// Writes an already built tree as ext4 to a sequential writer; returns
/// the writer's report and the image's SHA-256 (hex).
pub fn write_flattened<W: Write + Send>(
    f: &Flattened,
    deleted_data: ext4::DeletedData,
    out: W,
) -> Result<(ext4::ImageSummary, String)> {
    let opts = FlattenOptions::default().with_deleted_data(deleted_data);
    write_flattened_with(f, &opts, out)
}

/// [`write_flattened`] with the write options of `opts`
/// ([`FlattenOptions::deleted_data`] and [`FlattenOptions::hot`]).
pub fn write_flattened_with<W: Write + Send>(
    f: &Flattened,
    opts: &FlattenOptions<'_>,
    out: W,
) -> Result<(ext4::ImageSummary, String)> {
    let (uuid, hash_seed) = image_ids(&f.content_ids);
    let mut o = ext4::Ext4Options::new(uuid, hash_seed);
    o.deleted_data = opts.deleted_data;
    o.hot = opts.hot.cloned();
    // Writer thread → output thread (write) → hasher thread (SHA-256):
    // the sequential part of a flatten is spread over three threads.
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::sync::Arc<Vec<u8>>>(8);
    let (htx, hrx) = std::sync::mpsc::sync_channel::<std::sync::Arc<Vec<u8>>>(8);
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread_failed = failed.clone();
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut h = Sha256::new();
            for chunk in hrx {
                h.update(&chunk[..]);
            }
            hex::encode(h.finalize())
        });
        let output = s.spawn(move || -> io::Result<()> {
            let mut out = out;
            for chunk in rx {
                if let Err(e) = out.write_all(&chunk) {
                    thread_failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                // The hasher lives until this sender is dropped.
                let _ = htx.send(chunk);
            }
            out.flush()
        });
        let mut w = ThreadedWriter {
            pending: Vec::with_capacity(OUT_BATCH),
            tx: Some(tx),
            failed,
            pos: 0,
        };
        let result = ext4::write_image(&f.tree, &f.spool, &o, &mut w).and_then(|summary| {
            w.flush().map_err(|source| ext4::WriteError::Write {
                offset: w.pos,
                source,
            })?;
            Ok(summary)
        });
        let end = w.pos;
        drop(w);
        let written = output
            .join()
            .map_err(|_| Error::Internal("image output thread panicked".into()))?;
        let sha = hasher
            .join()
            .map_err(|_| Error::Internal("image hasher thread panicked".into()))?;
        let written = written.map(|()| sha);
        match (result, written) {
            (Ok(summary), Ok(sha)) => Ok((summary, sha)),
            // The output's own error explains a writer failure best.
            (_, Err(source)) => Err(Error::Write(ext4::WriteError::Write {
                offset: end,
                source,
            })),
            (Err(e), Ok(_)) => Err(Error::Write(e)),
        }
    })
}

fn summarize(f: &Flattened, image: ext4::ImageSummary, sha256: String) -> FlattenSummary {
    let entries = f
        .tree
        .nodes
        .iter()
        .map(|n| match &n.kind {
            tree::NodeKind::Directory { entries } => entries.len(),
            _ => 0,
        })
        .sum();
    FlattenSummary {
        size: image.size_bytes,
        sha256,
        layers: f.tree.layers.len(),
        nodes: f.tree.nodes.len(),
        entries,
        diff_ids: f.diff_ids.clone(),
        config_digest: f.config_digest.clone(),
        platform: f.platform.clone(),
        run_config: f.run_config.clone(),
        image,
    }
}

/// Flattens `image` into an ext4 file at `out`.
///
/// The image is written to a temporary file next to `out` and renamed
/// over it only when complete and synced, so a failure never leaves a
/// partial file that looks valid. The spool goes to the same directory
/// unless [`FlattenOptions::spool_dir`] says otherwise.
pub fn flatten(image: &ImageRef, opts: &FlattenOptions<'_>, out: &Path) -> Result<FlattenSummary> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let spool_dir = opts.spool_dir.clone().unwrap_or_else(|| dir.clone());
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |e| Error::Io { path, source: e }
    };
    let source = image.open_with(&spool_dir, &opts.registry)?;
    let f = build_tree(&*source, opts, &spool_dir)?;
    drop(source);
    report(opts, Phase::Writing, &f);
    let mut tmp = tempfile::Builder::new()
        .prefix(".lode-flatten-")
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(io_err(&dir))?;
    let out_file = EarlyWriteback {
        file: tmp.as_file_mut(),
        pos: 0,
        started: 0,
    };
    let (image, sha256) = write_flattened_with(&f, opts, out_file)?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    tmp.persist(out).map_err(|e| Error::Io {
        path: out.to_owned(),
        source: e.error,
    })?;
    Ok(summarize(&f, image, sha256))
}

/// Writes to a file and starts writeback of every finished 32 MiB in the
/// background, so the final `fsync` waits only for the tail.
struct EarlyWriteback<'a> {
    file: &'a mut File,
    pos: u64,
    started: u64,
}

const WRITEBACK_STEP: u64 = 32 << 20;

impl Write for EarlyWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        if self.pos - self.started >= WRITEBACK_STEP {
            use std::os::unix::io::AsRawFd;
            let len = self.pos - self.started;
            // SAFETY: plain syscall on an open descriptor; a failure only
            // means writeback starts later, at the final fsync.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started = self.pos;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Flattens `image` and streams the ext4 image to `out` (the writer never
/// seeks), e.g. straight into a chunker. The spool goes to
/// [`FlattenOptions::spool_dir`] or the system temp directory. On error
/// `out` has received a prefix of the image; the caller discards it.
pub fn flatten_to_writer<W: Write + Send>(
    image: &ImageRef,
    opts: &FlattenOptions<'_>,
    out: W,
) -> Result<FlattenSummary> {
    let spool_dir = opts.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let source = image.open_with(&spool_dir, &opts.registry)?;
    let f = build_tree(&*source, opts, &spool_dir)?;
    drop(source);
    report(opts, Phase::Writing, &f);
    let (image, sha256) = write_flattened_with(&f, opts, out)?;
    Ok(summarize(&f, image, sha256))
}

fn report(opts: &FlattenOptions<'_>, phase: Phase, f: &Flattened) {
    if let Some(p) = opts.progress {
        p(Progress {
            phase,
            bytes_read: f.bytes_read,
            bytes_total: f.bytes_read,
            layers: f.tree.layers.len(),
        });
    }
}

/// SHA-256 (hex) of a file, for checking a summary.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::Io {
            path: path.to_owned(),
            source: e,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_diff_ids_only() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let (u1, s1) = image_ids(&[a.clone(), b.clone()]);
        let (u2, s2) = image_ids(&[a.clone(), b.clone()]);
        assert_eq!((u1, s1), (u2, s2));
        let (u3, _) = image_ids(&[b, a]);
        assert_ne!(u1, u3);
        assert_ne!(u1, s1);
        assert_eq!(u1[6] >> 4, 8);
    }
}
