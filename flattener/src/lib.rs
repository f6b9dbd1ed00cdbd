//! Flattens OCI images into deterministic, dedup-friendly read-only ext4
//! images.
//!
//! An image (`oci:DIR[:TAG]` or `docker-archive:FILE`) is read through an
//! [`oci::ImageSource`]; its layers are decompressed (gzip, zstd or plain),
//! verified (blob digest and `rootfs.diff_ids`) and parsed in parallel,
//! file contents go to an on-disk spool ([`FileSpool`]), and the layers are
//! applied with the OCI/containerd rules into a [`tree::Tree`] that holds
//! metadata only. The ext4 writer then serializes the tree.
//!
//! Main entry points: [`ImageRef::parse`], [`build_tree`] (image → tree +
//! spool) and [`image_ids`] (the UUID and hash seed derived from the
//! layers' diff_ids).
//!
//! ```
//! use flattener::{ImageRef, FlattenOptions};
//! let r = ImageRef::parse("oci:/images/layout:python").unwrap();
//! assert_eq!(r.to_string(), "oci:/images/layout:python");
//! let opts = FlattenOptions::default();
//! assert_eq!(opts.platform.to_string(), "linux/amd64");
//! ```
//!
//! Features: none; gzip uses flate2 with the pure-Rust zlib-rs backend,
//! zstd uses ruzstd (pure Rust).
//!
//! Layer semantics and the choices made where the spec leaves room are
//! documented in the crate README (`flattener/README.md`).

pub mod error;
pub mod ext4;
mod layers;
pub mod oci;
mod tar;
pub mod tree;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use sha2::{Digest as _, Sha256};

pub use error::{Error, LayerError, Result};
pub use layers::FileSpool;
pub use oci::{Digest, ImageRef, ImageSource, Platform};

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
    /// Platform picked from a multi-platform index (default `linux/amd64`).
    pub platform: Platform,
    /// Called now and then from worker threads.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// Layers read at once (0 = number of CPUs). The output never depends on it.
    pub threads: usize,
    /// Where the spool goes (default: the output file's directory, or the
    /// system temp directory for [`build_tree`]).
    pub spool_dir: Option<PathBuf>,
}

impl Default for FlattenOptions<'_> {
    fn default() -> Self {
        Self {
            platform: Platform::default(),
            progress: None,
            threads: 0,
            spool_dir: None,
        }
    }
}

impl<'a> FlattenOptions<'a> {
    /// Default options with this progress callback.
    pub fn with_progress(mut self, f: &'a (dyn Fn(Progress) + Sync)) -> Self {
        self.progress = Some(f);
        self
    }

    /// Default options with this platform.
    pub fn with_platform(mut self, p: Platform) -> Self {
        self.platform = p;
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
    /// The image config's digest.
    pub config_digest: Digest,
}

/// The filesystem UUID and directory hash seed for an image: derived from
/// its diff_ids only, so the same layers give the same image whether they
/// arrive compressed or not, from an OCI layout or a docker-archive.
pub fn image_ids(diff_ids: &[Digest]) -> ([u8; 16], [u8; 16]) {
    let derive = |purpose: &[u8]| {
        let mut h = Sha256::new();
        h.update(b"lode-flattener\0");
        h.update(purpose);
        for d in diff_ids {
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

/// Reads every layer of `source` and applies them into a tree. File
/// contents go to anonymous temporary files in `spool_dir`.
pub fn build_tree(
    source: &dyn ImageSource,
    opts: &FlattenOptions<'_>,
    spool_dir: &Path,
) -> Result<Flattened> {
    let image = source.resolve(&opts.platform)?;
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
    for (i, (layer, desc)) in parsed.into_iter().zip(&image.layers).enumerate() {
        let spool = builder.apply(layer).map_err(|e| Error::Layer {
            index: i,
            blob: desc.name.clone(),
            source: e,
        })?;
        spools.push(spool);
    }
    Ok(Flattened {
        tree: builder.finish(),
        spool: FileSpool { layers: spools },
        diff_ids: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
        config_digest: image.config_digest,
    })
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
