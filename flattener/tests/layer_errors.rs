//! A bad layer blob in a multi-layer image is reported as what it is
//! (truncated, missing, corrupt) and under its own digest, never as a false
//! digest mismatch of an intact layer whose reading was cancelled because
//! of it.
//!
//! Each case runs twice on a 3-layer OCI layout whose middle layer is bad:
//! as is, and through a source that holds the intact layers 1 and 3 in the
//! middle of their blobs until layer 2 has failed, so that they are surely
//! cancelled (the case that used to blame layer 1).

mod common;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{Comp, E, compress, oci_layout, sha256_hex, tar};
use flattener::oci::{LayerDescriptor, ResolvedImage};
use flattener::{Error, FlattenOptions, ImageRef, ImageSource, LayerError, Platform, build_tree};
use sha2::{Digest as _, Sha256};

/// Bytes that gzip cannot shrink (SHA-256 in counter mode), so that the
/// blobs stay large.
fn noise(seed: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update([seed]);
        h.update(block.to_le_bytes());
        out.extend(h.finalize());
        block += 1;
    }
    out.truncate(len);
    out
}

/// A layout of three gzip layers of 4 MiB each; returns it and the layer
/// blob digests (`sha256:…`), bottom first.
fn three_layers(dir: &Path) -> (PathBuf, [String; 3]) {
    let layout = dir.join("layout");
    let names = ["one", "two", "three"];
    let tars: [Vec<u8>; 3] =
        std::array::from_fn(|i| tar(&[E::file(names[i], &noise(i as u8, 4 << 20))]));
    oci_layout(
        &layout,
        &[("t", tars.iter().map(|t| (t.clone(), Comp::Gzip)).collect())],
    );
    // The layout stores `compress(tar)`, which is deterministic.
    let digests =
        std::array::from_fn(|i| format!("sha256:{}", sha256_hex(&compress(&tars[i], Comp::Gzip))));
    (layout, digests)
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn open(layout: &Path, spool: &Path) -> Box<dyn ImageSource> {
    ImageRef::parse(&format!("oci:{}:t", layout.display()))
        .unwrap()
        .open(spool)
        .unwrap()
}

/// Set once layer 2 has failed to open, reached its end or been dropped.
#[derive(Default)]
struct Signal {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    fn set(&self) {
        *self.done.lock().unwrap() = true;
        self.cv.notify_all();
    }
    fn wait(&self) {
        let g = self.done.lock().unwrap();
        // Bounded, so a regression cannot hang the suite.
        let _ = self
            .cv
            .wait_timeout_while(g, Duration::from_secs(20), |d| !*d)
            .unwrap();
    }
}

/// The layout, with layers 1 and 3 held after their first 64 KiB until
/// layer 2 is over (then given time to be cancelled).
struct Gated {
    inner: Box<dyn ImageSource>,
    bad: String,
    signal: Arc<Signal>,
}

struct Held<'a> {
    inner: Box<dyn Read + Send + 'a>,
    given: u64,
    held: bool,
    signal: Arc<Signal>,
}

impl Read for Held<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.held && self.given >= 64 << 10 {
            self.held = true;
            self.signal.wait();
            // Let layer 2's worker record its error and cancel the others.
            std::thread::sleep(Duration::from_millis(300));
        }
        let want = buf.len().min(16 << 10);
        let n = self.inner.read(&mut buf[..want])?;
        self.given += n as u64;
        Ok(n)
    }
}

struct Watched<'a> {
    inner: Box<dyn Read + Send + 'a>,
    signal: Arc<Signal>,
}

impl Read for Watched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.inner.read(buf);
        if !matches!(r, Ok(n) if n > 0) {
            self.signal.set();
        }
        r
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.signal.set();
    }
}

impl ImageSource for Gated {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn resolve(&self, platform: &Platform) -> flattener::Result<ResolvedImage> {
        self.inner.resolve(platform)
    }
    fn open_layer(&self, layer: &LayerDescriptor) -> flattener::Result<Box<dyn Read + Send + '_>> {
        let is_bad = layer.digest.as_ref().map(ToString::to_string) == Some(self.bad.clone());
        let r = self.inner.open_layer(layer);
        let signal = self.signal.clone();
        if is_bad {
            match r {
                Ok(inner) => Ok(Box::new(Watched { inner, signal })),
                Err(e) => {
                    signal.set();
                    Err(e)
                }
            }
        } else {
            Ok(Box::new(Held {
                inner: r?,
                given: 0,
                held: false,
                signal,
            }))
        }
    }
}

/// The errors of flattening the damaged layout, as is and gated (three
/// threads, so all layers are read at once).
fn errors(layout: &Path, spool: &Path, bad: &str) -> Vec<Error> {
    let mut opts = FlattenOptions::default();
    opts.threads = 3;
    let plain = build_tree(&*open(layout, spool), &opts, spool).unwrap_err();
    let gated = Gated {
        inner: open(layout, spool),
        bad: bad.to_owned(),
        signal: Arc::default(),
    };
    let held = build_tree(&gated, &opts, spool).unwrap_err();
    vec![plain, held]
}

/// The message names layer 2's digest and neither of the others'.
fn blames_only(e: &Error, digests: &[String; 3]) {
    let msg = e.to_string();
    assert!(msg.contains(&digests[1]), "{msg}");
    assert!(!msg.contains(&digests[0]), "blames layer 1: {msg}");
    assert!(!msg.contains(&digests[2]), "blames layer 3: {msg}");
}

#[test]
fn truncated_middle_layer_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, digests) = three_layers(dir.path());
    let path = blob_path(&layout, &digests[1]);
    let full = std::fs::read(&path).unwrap();
    let cut = full.len() / 2;
    std::fs::write(&path, &full[..cut]).unwrap();
    for e in errors(&layout, dir.path(), &digests[1]) {
        blames_only(&e, &digests);
        match &e {
            Error::Layer {
                index: 1,
                blob,
                source: LayerError::BlobTruncated { expected, actual },
            } => {
                assert_eq!(blob, &digests[1]);
                assert_eq!((*expected, *actual), (full.len() as u64, cut as u64));
            }
            other => panic!("not reported as a truncated layer 2: {other:?} ({other})"),
        }
        assert!(common::chain(&e).contains("truncated"), "{e}");
    }
}

#[test]
fn missing_middle_layer_is_reported_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, digests) = three_layers(dir.path());
    let path = blob_path(&layout, &digests[1]);
    std::fs::remove_file(&path).unwrap();
    for e in errors(&layout, dir.path(), &digests[1]) {
        blames_only(&e, &digests);
        match &e {
            Error::Layer {
                index: 1,
                blob,
                source: LayerError::BlobMissing { path: p },
            } => {
                assert_eq!(blob, &digests[1]);
                assert_eq!(p, &path);
            }
            other => panic!("not reported as a missing layer 2: {other:?} ({other})"),
        }
        assert!(common::chain(&e).contains("missing"), "{e}");
    }
}

#[test]
fn corrupt_middle_layer_is_reported_as_a_digest_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, digests) = three_layers(dir.path());
    let path = blob_path(&layout, &digests[1]);
    let mut bytes = std::fs::read(&path).unwrap();
    // The first deflate block's type bits (after the 10-byte gzip header):
    // decoding fails at once, long before the end of the blob.
    bytes[10] ^= 0x06;
    std::fs::write(&path, &bytes).unwrap();
    let real = format!("sha256:{}", sha256_hex(&bytes));
    for e in errors(&layout, dir.path(), &digests[1]) {
        blames_only(&e, &digests);
        match &e {
            Error::DigestMismatch {
                blob,
                expected,
                actual,
            } => {
                assert_eq!(blob, &digests[1]);
                assert_eq!(expected, &digests[1]);
                // The digest of the whole blob as stored, not of a prefix.
                assert_eq!(actual, &real);
            }
            other => panic!("not reported as layer 2's digest mismatch: {other:?} ({other})"),
        }
    }
}
