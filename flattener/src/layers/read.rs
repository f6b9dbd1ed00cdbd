//! Reading layer blobs: detect and decompress (on a thread of its own per
//! layer), check the blob digest and size and the diff_id, parse and spool;
//! several layers at a time, with the first real failure reported.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::entry::ParsedLayer;
use super::parse::parse_tar;
use crate::error::{Error, LayerError};
use crate::oci::{
    Compression, Digest, DigestAlgorithm, DigestHasher, ImageSource, LayerDescriptor,
};

/// Size of the decompressed chunks handed from the decoder thread.
const CHUNK: usize = 1 << 20;

/// Shared progress counter of compressed bytes read.
pub(crate) struct Counter<'a> {
    pub(crate) read: AtomicU64,
    pub(crate) notify: &'a (dyn Fn(u64) + Sync),
}

/// Why a layer's decoding stopped early: another layer failed. The bytes
/// read so far say nothing about this layer (its digests are partial).
#[derive(Debug)]
struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled because another layer failed")
    }
}

impl std::error::Error for Cancelled {}

fn is_cancelled(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Cancelled>())
}

/// How reading one layer ended, when it did not give a layer.
#[derive(Debug)]
enum Failure {
    /// Stopped because another layer failed: not a cause of its own.
    Cancelled,
    /// This layer's own problem.
    Failed(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

/// Reads compressed bytes, hashing and counting them.
struct HashingReader<'a, R> {
    inner: R,
    hasher: DigestHasher,
    count: u64,
    counter: &'a Counter<'a>,
    /// The first error of the blob's own reader (not of decoding): then the
    /// blob's size and digest are unknown.
    read_error: Option<io::Error>,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.read_error.get_or_insert(e);
                return Err(copy);
            }
        };
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        let total = self.counter.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        (self.counter.notify)(total);
        Ok(n)
    }
}

/// Receives decompressed chunks from the decoder thread (and hands the
/// emptied buffers back for reuse).
struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    free: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    hasher: DigestHasher,
    failed: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.failed {
                return Err(io::Error::other("decompression failed"));
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.hasher.update(&chunk);
                    let old = std::mem::replace(&mut self.cur, chunk);
                    if old.capacity() > 0 {
                        let _ = self.free.try_send(old);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || is_zstd_skippable(head) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A zstd skippable frame (magic 0x184D2A50..=0x184D2A5F): metadata that
/// zstd decoders (the zstd CLI, containerd's) skip, and a stream may start
/// with one.
fn is_zstd_skippable(head: &[u8]) -> bool {
    head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18]
}

fn codec_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "tar",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// Decompresses `r` into chunks sent to `tx`; returns an error on corrupt data.
fn decompress<R: BufRead>(
    r: &mut R,
    codec: Compression,
    tx: &SyncSender<io::Result<Vec<u8>>>,
    free: &Receiver<Vec<u8>>,
    cancel: &AtomicBool,
) -> io::Result<()> {
    let pump = |src: &mut dyn Read| -> io::Result<()> {
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(io::Error::other(Cancelled));
            }
            let mut chunk = free.try_recv().unwrap_or_default();
            // A recycled buffer is already CHUNK long: no zeroing.
            chunk.resize(CHUNK, 0);
            let mut filled = 0;
            while filled < CHUNK {
                match src.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if filled == 0 {
                return Ok(());
            }
            chunk.truncate(filled);
            // The reader stops listening once it has an error; keep
            // decoding so the blob digest still covers every byte.
            let _ = tx.send(Ok(chunk));
            if filled < CHUNK {
                return Ok(());
            }
        }
    };
    match codec {
        Compression::None => pump(r),
        Compression::Gzip => {
            let mut d = flate2::bufread::MultiGzDecoder::new(&mut *r);
            pump(&mut d)?;
            drop(d);
            if r.fill_buf()?.is_empty() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "trailing bytes after the gzip stream",
                ))
            }
        }
        Compression::Zstd => loop {
            // One or more frames, back to back.
            if r.fill_buf()?.is_empty() {
                return Ok(());
            }
            let mut magic = [0u8; 4];
            r.read_exact(&mut magic)?;
            if is_zstd_skippable(&magic) {
                // ruzstd's streaming decoder rejects skippable frames: skip
                // them here (the blob digest still covers their bytes).
                let mut len = [0u8; 4];
                r.read_exact(&mut len)?;
                let len = u64::from(u32::from_le_bytes(len));
                if io::copy(&mut (&mut *r).take(len), &mut io::sink())? != len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "truncated zstd skippable frame",
                    ));
                }
                continue;
            }
            let mut d = ruzstd::decoding::StreamingDecoder::new((&magic[..]).chain(&mut *r))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            pump(&mut d)?;
        },
    }
}

/// Reads, verifies and spools one layer.
fn read_layer(
    source: &dyn ImageSource,
    index: usize,
    desc: &LayerDescriptor,
    spool_dir: &std::path::Path,
    counter: &Counter<'_>,
    cancel: &AtomicBool,
) -> Result<ParsedLayer, Failure> {
    let layer_err = |source: LayerError| {
        Failure::Failed(Error::Layer {
            index,
            blob: desc.name.clone(),
            source,
        })
    };
    let raw = match source.open_layer(desc) {
        Ok(raw) => raw,
        Err(Error::Io { path, source }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(layer_err(LayerError::BlobMissing { path }));
        }
        Err(e) => return Err(e.into()),
    };
    let mut input = BufReader::with_capacity(
        CHUNK,
        HashingReader {
            inner: raw,
            // The blob is checked under its digest's algorithm.
            hasher: DigestHasher::new(
                desc.digest
                    .as_ref()
                    .map_or(DigestAlgorithm::Sha256, Digest::algorithm),
            ),
            count: 0,
            counter,
            read_error: None,
        },
    );
    let found = detect(input.fill_buf().map_err(|e| layer_err(LayerError::Io(e)))?);
    if let Some(announced) = desc.compression
        && announced != found
    {
        return Err(layer_err(LayerError::Format(format!(
            "media type says {} but the data is {}",
            codec_name(announced),
            codec_name(found)
        ))));
    }
    let spool_file = tempfile::tempfile_in(spool_dir).map_err(|e| Error::Io {
        path: spool_dir.to_owned(),
        source: e,
    })?;

    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(4);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(8);
    let (parsed, decoder, diff) = std::thread::scope(|s| {
        let decoder = s.spawn(move || {
            let mut result = decompress(&mut input, found, &tx, &free_rx, cancel);
            let cancelled = result.as_ref().is_err_and(is_cancelled);
            if !cancelled {
                // Hash whatever follows (nothing, for a valid blob; the
                // rest of a corrupt one, so that its size and digest are
                // those of the whole blob and name the real problem).
                let rest = io::copy(&mut input, &mut io::sink()).map(|_| ());
                if result.is_ok() {
                    result = rest;
                }
            }
            if let Err(e) = &result {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            drop(tx);
            let h = input.into_inner();
            (result, h.hasher.finish(), h.count, h.read_error)
        });
        let mut chan = ChannelReader {
            rx,
            free: free_tx,
            cur: Vec::new(),
            pos: 0,
            hasher: DigestHasher::new(desc.diff_id.algorithm()),
            failed: false,
        };
        let parsed = parse_tar(&mut chan, index, spool_file);
        // Hash the rest of the stream (end-of-archive padding), so the
        // diff_id covers every byte.
        let _ = io::copy(&mut chan, &mut io::sink());
        let diff = chan.hasher.finish();
        drop(chan.rx);
        let joined = decoder.join();
        (parsed, joined, diff)
    });
    let Ok((decoded, blob_digest, blob_size, read_error)) = decoder else {
        return Err(Failure::Failed(Error::Internal(format!(
            "the decoder thread of layer {index} ({}) panicked",
            desc.name
        ))));
    };

    // Most fundamental problem first: whether this layer was read at all
    // (cancelled, or the blob could not be read), then the blob's bytes
    // (size, digest), then decoding, then the uncompressed digest, then the
    // tar content.
    if decoded.as_ref().is_err_and(is_cancelled) {
        return Err(Failure::Cancelled);
    }
    if let Some(e) = read_error {
        return Err(layer_err(LayerError::Io(e)));
    }
    if let Some(size) = desc.size {
        if blob_size < size {
            return Err(layer_err(LayerError::BlobTruncated {
                expected: size,
                actual: blob_size,
            }));
        }
        if blob_size > size {
            return Err(Failure::Failed(Error::DigestMismatch {
                blob: desc.name.clone(),
                expected: format!("{size} bytes"),
                actual: format!("{blob_size} bytes"),
            }));
        }
    }
    if let Some(expected) = &desc.digest
        && &blob_digest != expected
    {
        return Err(Failure::Failed(Error::DigestMismatch {
            blob: desc.name.clone(),
            expected: expected.to_string(),
            actual: blob_digest.to_string(),
        }));
    }
    if let Err(e) = decoded {
        return Err(layer_err(LayerError::Decompress {
            codec: codec_name(found),
            source: e,
        }));
    }
    if diff != desc.diff_id {
        return Err(Failure::Failed(Error::DiffIdMismatch {
            index,
            blob: desc.name.clone(),
            expected: desc.diff_id.to_string(),
            actual: diff.to_string(),
        }));
    }
    parsed.map_err(layer_err)
}

/// Reads all layers, `threads` at a time; results in layer order.
///
/// The first layer to fail cancels the others. The error reported is the
/// failure of the lowest layer that failed for a cause of its own, never
/// the cancellation of a layer that was merely stopped.
pub(crate) fn read_layers(
    source: &dyn ImageSource,
    layers: &[LayerDescriptor],
    spool_dir: &std::path::Path,
    threads: usize,
    counter: &Counter<'_>,
) -> Result<Vec<ParsedLayer>, Error> {
    let next = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<ParsedLayer, Failure>>>> =
        Mutex::new((0..layers.len()).map(|_| None).collect());
    let workers = threads.clamp(1, layers.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(desc) = layers.get(i) else { return };
                    let r = read_layer(source, i, desc, spool_dir, counter, &cancel);
                    if r.is_err() {
                        cancel.store(true, Ordering::Relaxed);
                    }
                    if let Ok(mut v) = results.lock() {
                        v[i] = Some(r);
                    }
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| Error::Internal("layer worker panicked".into()))?;
    let mut out = Vec::with_capacity(layers.len());
    for r in results {
        match r {
            Some(Ok(p)) => out.push(p),
            Some(Err(Failure::Failed(e))) => return Err(e),
            Some(Err(Failure::Cancelled)) | None => {}
        }
    }
    if out.len() != layers.len() {
        // Layers are cancelled only after another one failed.
        return Err(Error::Internal(
            "layers were cancelled but none failed".into(),
        ));
    }
    Ok(out)
}
