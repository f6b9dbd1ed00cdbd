//! Reading layers (decompress, verify, parse, spool) and applying them to a
//! [`Tree`] with the OCI / containerd rules.
//!
//! Reading is parallel (one layer per worker, decompression on its own
//! thread); applying is sequential and touches metadata only.
//!
//! Rules, where the spec leaves room (all tested):
//! - Within a layer, whiteouts and opaque markers apply first (they only
//!   hide lower layers), then the other entries sorted by path (a parent
//!   before its children; same-path duplicates keep tar order, the last
//!   wins). A hard link applies at its place, or at the end when its
//!   target is an entry of the layer that comes later, and may name a
//!   lower file that the layer's own whiteouts removed. So the result does
//!   not depend on entry order.
//! - A whiteout or opaque marker inside a directory that the layer itself
//!   puts where the lower layers have no directory (a directory replacing
//!   a symlink) concerns that new directory only, never the symlink's
//!   target.
//! - A whiteout or opaque marker for a path that does not exist is ignored
//!   (as containerd does). aufs metadata (`.wh..wh.*` names, anything
//!   under `/.wh..wh.*/`) is not part of the image; files in
//!   `/.wh..wh.plnk/` remain hard-link targets for the layer (as Docker
//!   keeps them).
//! - Missing parent directories are created with mode 0755, uid/gid 0 and
//!   mtime 0 (the epoch), so the output does not depend on the clock.
//! - Symlinks in the *parent* part of a path resolve inside the image root
//!   (as containerd and umoci do); the last component is never followed,
//!   and nothing can escape the root. A parent that is a file is an error.
//! - A directory entry over an existing directory keeps its children and
//!   takes the entry's mode, owner, mtime and xattrs (old xattrs are gone).
//! - A hard link shares the target's node (its own header metadata is
//!   ignored); an upper layer replacing one of the names gives that name a
//!   new node and the other names keep the old one. A hard link to a
//!   missing path or to a directory is an error.
//! - xattrs outside `user.`, `trusted.`, `security.` and the two POSIX ACL
//!   names (`system.posix_acl_access`, `system.posix_acl_default`, in the
//!   kernel's xattr format as Go's archive/tar writes them) are dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, LayerError};
use crate::oci::{
    Compression, Digest, DigestAlgorithm, DigestHasher, ImageSource, LayerDescriptor,
};
use crate::tar::{EntryType, TarError, TarReader};
use crate::tree::{DataExtent, FileData, FileId, Metadata, Node, NodeId, NodeKind, Tree};

/// Largest file ext4 with 4 KiB blocks and extents can hold (2^32 blocks).
pub(crate) const MAX_FILE_SIZE: u64 = (1 << 44) - 4096;
/// Longest symlink target Linux accepts.
const MAX_SYMLINK: usize = 4095;
/// Symlinks followed while resolving one path (Linux uses 40).
const MAX_FOLLOWS: usize = 40;
const CHUNK: usize = 1 << 20;

/// What an entry does.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Dir,
    File(usize),
    HardLink(Vec<Vec<u8>>),
    Symlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    Whiteout,
    Opaque,
}

/// One normalized entry of a layer.
#[derive(Clone, Debug)]
pub(crate) struct LayerEntry {
    /// The path as in the archive, for messages.
    raw: Vec<u8>,
    comps: Vec<Vec<u8>>,
    op: Op,
    meta: Metadata,
}

/// A layer read into memory (metadata) and spool (contents).
pub(crate) struct ParsedLayer {
    pub(crate) entries: Vec<LayerEntry>,
    /// File contents, indexed by [`Op::File`].
    pub(crate) files: Vec<FileData>,
    /// XXH3-128 of each file's stored bytes, same index (only feeds the
    /// content id, which needs no collision resistance against attackers:
    /// it only picks the UUID).
    pub(crate) file_hashes: Vec<u128>,
    pub(crate) spool: File,
}

fn entry_err(raw: &[u8], reason: impl Into<String>) -> LayerError {
    LayerError::Entry {
        path: String::from_utf8_lossy(raw).into_owned(),
        reason: reason.into(),
    }
}

/// Splits a tar path into components: drops empty and `.` parts, lets `..`
/// go up but never above the root.
pub(crate) fn normalize(path: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(c.to_vec()),
        }
    }
    out
}

fn check_components(raw: &[u8], comps: &[Vec<u8>]) -> Result<(), LayerError> {
    for c in comps {
        if c.len() > 255 {
            return Err(entry_err(
                raw,
                format!("name component of {} bytes; ext4 allows 255", c.len()),
            ));
        }
        if c.contains(&0) {
            return Err(entry_err(raw, "name contains a NUL byte"));
        }
    }
    Ok(())
}

fn keep_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"trusted.")
        || name.starts_with(b"security.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Whether a (kept) xattr can live on a node of this kind. The kernel lists
/// but never reads `user.*` xattrs on anything but regular files and
/// directories (ENODATA), nor POSIX ACLs on symlinks (EOPNOTSUPP), and no
/// unpacker can set them there: they are dropped. Hard links take the
/// target's xattrs.
fn keep_xattr_on(op: &Op, name: &[u8]) -> bool {
    match op {
        Op::File(_) | Op::Dir | Op::HardLink(_) => true,
        Op::Symlink(_) => !name.starts_with(b"user.") && !name.starts_with(b"system.posix_acl_"),
        _ => !name.starts_with(b"user."),
    }
}

/// Whether a path lies in aufs metadata at the root (`/.wh..wh.*/…`).
fn is_aufs_meta(comps: &[Vec<u8>]) -> bool {
    comps.len() > 1 && comps[0].starts_with(b".wh..wh.")
}

/// Shared progress counter of compressed bytes read.
pub(crate) struct Counter<'a> {
    pub(crate) read: AtomicU64,
    pub(crate) notify: &'a (dyn Fn(u64) + Sync),
}

/// Reads compressed bytes, hashing and counting them.
struct HashingReader<'a, R> {
    inner: R,
    hasher: DigestHasher,
    count: u64,
    counter: &'a Counter<'a>,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
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
                return Err(io::Error::other("cancelled"));
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
pub(crate) fn read_layer(
    source: &dyn ImageSource,
    index: usize,
    desc: &LayerDescriptor,
    spool_dir: &std::path::Path,
    counter: &Counter<'_>,
    cancel: &AtomicBool,
) -> Result<ParsedLayer, Error> {
    let layer_err = |source: LayerError| Error::Layer {
        index,
        blob: desc.name.clone(),
        source,
    };
    let raw = source.open_layer(desc)?;
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
    let (parsed, decoded, blob_digest, blob_size, diff) = std::thread::scope(|s| {
        let decoder = s.spawn(move || {
            let mut result = decompress(&mut input, found, &tx, &free_rx, cancel);
            if result.is_ok() {
                // Hash whatever follows (nothing, for a valid blob).
                result = io::copy(&mut input, &mut io::sink()).map(|_| ());
            }
            if let Err(e) = &result {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            drop(tx);
            let h = input.into_inner();
            (result, h.hasher.finish(), h.count)
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
        let (decoded, digest, size) = decoder.join().unwrap_or_else(|_| {
            (
                Err(io::Error::other("decoder thread panicked")),
                Digest::of(b""),
                0,
            )
        });
        (parsed, decoded, digest, size, diff)
    });

    // Most fundamental problem first: the blob's bytes, then decoding,
    // then the uncompressed digest, then the tar content.
    if let Some(expected) = &desc.digest
        && &blob_digest != expected
    {
        return Err(Error::DigestMismatch {
            blob: desc.name.clone(),
            expected: expected.to_string(),
            actual: blob_digest.to_string(),
        });
    }
    if let Some(size) = desc.size
        && size != blob_size
    {
        return Err(Error::DigestMismatch {
            blob: desc.name.clone(),
            expected: format!("{size} bytes"),
            actual: format!("{blob_size} bytes"),
        });
    }
    if let Err(e) = decoded {
        if cancel.load(Ordering::Relaxed) && e.to_string() == "cancelled" {
            return Err(layer_err(LayerError::Io(e)));
        }
        return Err(layer_err(LayerError::Decompress {
            codec: codec_name(found),
            source: e,
        }));
    }
    if diff != desc.diff_id {
        return Err(Error::DiffIdMismatch {
            index,
            blob: desc.name.clone(),
            expected: desc.diff_id.to_string(),
            actual: diff.to_string(),
        });
    }
    parsed.map_err(layer_err)
}

fn tar_err(e: TarError) -> LayerError {
    match e {
        TarError::Io(e) => LayerError::Io(e),
        TarError::Truncated { offset } => LayerError::Truncated { offset },
        TarError::Malformed { offset, reason } => LayerError::Malformed { offset, reason },
    }
}

/// Parses a layer's tar stream, spooling file contents to `spool`.
pub(crate) fn parse_tar(
    r: &mut dyn Read,
    layer: usize,
    spool: File,
) -> Result<ParsedLayer, LayerError> {
    let layer_u32 =
        u32::try_from(layer).map_err(|_| LayerError::Format("too many layers".into()))?;
    // The channel reader hands out whole chunks: no extra buffer needed.
    let mut tar = TarReader::new(r);
    let mut out = BufWriter::with_capacity(CHUNK, spool);
    let mut spool_pos = 0u64;
    let mut entries = Vec::new();
    let mut files: Vec<FileData> = Vec::new();
    let mut file_hashes = Vec::new();
    while let Some(e) = tar.next_entry().map_err(tar_err)? {
        let comps = normalize(&e.path);
        check_components(&e.path, &comps)?;
        if let Some(k) = e.xattrs.keys().find(|k| k.contains(&0)) {
            // The xattr interface takes C strings: no unpacker could set it,
            // and stored as is it would list as two names.
            return Err(entry_err(
                &e.path,
                format!(
                    "xattr name {:?} contains a NUL byte",
                    String::from_utf8_lossy(k)
                ),
            ));
        }
        // Id 2^32-1 is "leave unchanged" to chown(2): every unpacker leaves
        // such a file owned by root, and the kernel could not show it
        // anyway (it is INVALID_UID; stat would say 65534).
        let id = |v: u32| if v == u32::MAX { 0 } else { v };
        let meta = Metadata {
            mode: e.mode,
            uid: id(e.uid),
            gid: id(e.gid),
            mtime: e.mtime,
            xattrs: e
                .xattrs
                .iter()
                .filter(|(k, _)| keep_xattr(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let (comps, op) = match comps.last().map(Vec::as_slice) {
            Some(b".wh..wh..opq") => (comps[..comps.len() - 1].to_vec(), Op::Opaque),
            Some(name) if name.starts_with(b".wh..wh.") => continue, // aufs metadata
            Some(name) if name.starts_with(b".wh.") => {
                let target = &name[4..];
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(entry_err(&e.path, "whiteout without a valid name"));
                }
                let mut c = comps[..comps.len() - 1].to_vec();
                c.push(target.to_vec());
                (c, Op::Whiteout)
            }
            _ => {
                let op = match e.kind {
                    EntryType::Directory => Op::Dir,
                    EntryType::Regular => {
                        if e.size > MAX_FILE_SIZE {
                            return Err(entry_err(
                                &e.path,
                                format!("file size {} exceeds ext4's limit", e.size),
                            ));
                        }
                        let mut extents: Vec<DataExtent> = Vec::new();
                        let mut fh = twox_hash::XxHash3_128::new();
                        tar.read_data(&e, &mut |file_offset, bytes| {
                            out.write_all(bytes)?;
                            fh.write(bytes);
                            match extents.last_mut() {
                                Some(x)
                                    if x.file_offset + x.len == file_offset
                                        && x.spool_offset + x.len == spool_pos =>
                                {
                                    x.len += bytes.len() as u64;
                                }
                                _ => extents.push(DataExtent {
                                    file_offset,
                                    len: bytes.len() as u64,
                                    spool_offset: spool_pos,
                                }),
                            }
                            spool_pos += bytes.len() as u64;
                            Ok(())
                        })
                        .map_err(tar_err)?;
                        if extents
                            .last()
                            .is_some_and(|x| x.file_offset + x.len > e.size)
                        {
                            return Err(entry_err(&e.path, "data beyond the file size"));
                        }
                        file_hashes.push(fh.finish_128());
                        files.push(FileData {
                            layer: layer_u32,
                            size: e.size,
                            extents,
                        });
                        Op::File(files.len() - 1)
                    }
                    EntryType::HardLink => {
                        let target = normalize(&e.link);
                        if target.is_empty() {
                            return Err(entry_err(&e.path, "hard link to the root directory"));
                        }
                        check_components(&e.link, &target)?;
                        Op::HardLink(target)
                    }
                    EntryType::Symlink => {
                        if e.link.is_empty() || e.link.len() > MAX_SYMLINK || e.link.contains(&0) {
                            return Err(entry_err(
                                &e.path,
                                format!("invalid symlink target of {} bytes", e.link.len()),
                            ));
                        }
                        Op::Symlink(e.link.clone())
                    }
                    EntryType::CharDevice => Op::Char(e.devmajor, e.devminor),
                    EntryType::BlockDevice => Op::Block(e.devmajor, e.devminor),
                    EntryType::Fifo => Op::Fifo,
                };
                (comps, op)
            }
        };
        let mut meta = meta;
        meta.xattrs.retain(|k, _| keep_xattr_on(&op, k));
        if matches!(op, Op::Symlink(_)) {
            // Linux cannot give a symlink other permissions: every unpacker
            // (containerd, umoci, GNU tar) creates it 0777 whatever the
            // header says.
            meta.mode = 0o777;
        }
        entries.push(LayerEntry {
            raw: e.path,
            comps,
            op,
            meta,
        });
    }
    let spool = out
        .into_inner()
        .map_err(|e| LayerError::Io(e.into_error()))?;
    Ok(ParsedLayer {
        entries,
        files,
        file_hashes,
        spool,
    })
}

/// Reads all layers, `threads` at a time; results in layer order.
pub(crate) fn read_layers(
    source: &dyn ImageSource,
    layers: &[LayerDescriptor],
    spool_dir: &std::path::Path,
    threads: usize,
    counter: &Counter<'_>,
) -> Result<Vec<ParsedLayer>, Error> {
    let next = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<ParsedLayer, Error>>>> =
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
    let mut first_err: Option<(bool, Error)> = None;
    for r in results {
        match r {
            Some(Ok(p)) => out.push(p),
            Some(Err(e)) => {
                // Report a real error rather than another worker's "cancelled".
                let cancelled = matches!(&e, Error::Layer { source: LayerError::Io(io), .. } if io.to_string() == "cancelled");
                let replace = match &first_err {
                    None => true,
                    Some((was_cancelled, _)) => *was_cancelled && !cancelled,
                };
                if replace {
                    first_err = Some((cancelled, e));
                }
            }
            None => {}
        }
    }
    if let Some((_, e)) = first_err {
        return Err(e);
    }
    Ok(out)
}

/// Builds the tree from parsed layers.
pub(crate) struct Builder {
    tree: Tree,
}

fn implicit_dir() -> Node {
    Node {
        meta: Metadata {
            mode: 0o755,
            ..Metadata::default()
        },
        kind: NodeKind::Directory {
            entries: BTreeMap::new(),
        },
    }
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            tree: Tree::new(Metadata {
                mode: 0o755,
                ..Metadata::default()
            }),
        }
    }

    fn entries_mut(&mut self, dir: NodeId) -> &mut BTreeMap<Vec<u8>, NodeId> {
        match &mut self.tree.node_mut(dir).kind {
            NodeKind::Directory { entries } => entries,
            // Only directories are ever pushed on the resolution stack.
            _ => unreachable!("resolve_dir returns directories only"),
        }
    }

    /// Resolves `comps` to a directory, following symlinks (inside the
    /// root). With `create`, missing directories are made; otherwise a
    /// missing or non-directory component gives `Ok(None)`.
    fn resolve_dir(&mut self, comps: &[Vec<u8>], create: bool) -> Result<Option<NodeId>, String> {
        let mut stack = vec![Tree::ROOT];
        let mut todo: VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut follows = 0;
        while let Some(c) = todo.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let cur = *stack.last().unwrap_or(&Tree::ROOT);
            let child = self.entries_mut(cur).get(&c).copied();
            match child {
                None => {
                    if !create {
                        return Ok(None);
                    }
                    if c.len() > 255 {
                        return Err("a symlink leads to a name longer than 255 bytes".into());
                    }
                    let id = self.tree.push_node(implicit_dir());
                    self.entries_mut(cur).insert(c, id);
                    stack.push(id);
                }
                Some(id) => match &self.tree.node(id).kind {
                    NodeKind::Directory { .. } => stack.push(id),
                    NodeKind::Symlink { target } => {
                        follows += 1;
                        if follows > MAX_FOLLOWS {
                            return Err("too many levels of symbolic links".into());
                        }
                        if target.first() == Some(&b'/') {
                            stack.truncate(1);
                        }
                        for part in target.split(|&b| b == b'/').rev() {
                            todo.push_front(part.to_vec());
                        }
                    }
                    _ if create => {
                        return Err(format!(
                            "parent component {:?} is not a directory",
                            String::from_utf8_lossy(&c)
                        ));
                    }
                    _ => return Ok(None),
                },
            }
        }
        Ok(stack.last().copied())
    }

    /// Applies one parsed layer; returns its spool and content digest.
    pub(crate) fn apply(&mut self, layer: ParsedLayer) -> Result<(File, Digest), LayerError> {
        let ParsedLayer {
            mut entries,
            files,
            file_hashes,
            spool,
        } = layer;
        // Order independent of the tar: by path; ties keep tar order.
        entries.sort_by(|a, b| a.comps.cmp(&b.comps));
        let digest = content_digest(&entries, &files, &file_hashes);

        // This layer's files, in placement order.
        let mut global = vec![FileId(u32::MAX); files.len()];
        let mut placed = Vec::with_capacity(files.len());
        let mut files: Vec<Option<FileData>> = files.into_iter().map(Some).collect();
        for e in &entries {
            if let Op::File(i) = e.op {
                let id = FileId(
                    u32::try_from(self.tree.files.len())
                        .map_err(|_| LayerError::Format("too many files".into()))?,
                );
                if let Some(f) = files[i].take() {
                    self.tree.files.push(f);
                    global[i] = id;
                    placed.push(id);
                }
            }
        }
        self.tree.layers.push(placed);

        // 0. What hard-link targets name in the lower layers, before this
        // layer's whiteouts hide them: a link may keep a file alive that the
        // same layer deletes (in tar order, the link comes first).
        let mut lower_targets: HashMap<&[Vec<u8>], NodeId> = HashMap::new();
        for e in &entries {
            if let Op::HardLink(t) = &e.op
                && let Some(node) = self.lookup(t)
            {
                lower_targets.insert(t, node);
            }
        }
        // 1. Whiteouts and opaque markers hide lower layers. One inside a
        // directory that this layer puts where a lower layer has something
        // else (a directory replacing the symlink `lib -> usr/lib`) concerns
        // that new, empty directory: it must not reach through the lower
        // symlink (in tar order the directory comes first).
        let mut written: HashMap<&[Vec<u8>], bool> = HashMap::new();
        for e in &entries {
            if !matches!(e.op, Op::Whiteout | Op::Opaque) {
                written.insert(&e.comps, matches!(e.op, Op::Dir));
            }
        }
        for e in &entries {
            let dir_comps = match e.op {
                Op::Whiteout => &e.comps[..e.comps.len().saturating_sub(1)],
                Op::Opaque => &e.comps[..],
                _ => continue,
            };
            if self.replaced_by_layer(dir_comps, &written) {
                continue;
            }
            match e.op {
                Op::Whiteout => {
                    if let Some((name, parent)) = e.comps.split_last()
                        && let Ok(Some(dir)) = self.resolve_dir(parent, false)
                    {
                        self.entries_mut(dir).remove(name);
                    }
                }
                Op::Opaque => {
                    if let Ok(Some(dir)) = self.resolve_dir(&e.comps, false) {
                        self.entries_mut(dir).clear();
                    }
                }
                _ => {}
            }
        }
        // Keep only the targets the whiteouts removed: any other target
        // must resolve when the link applies. (aufs link targets join below.)
        lower_targets.retain(|t, _| self.lookup(t).is_none());
        // 2. Entries in path order (parents first), hard links too, so that
        // entries below a link to a symlink resolve through it. A hard link
        // whose target this layer writes later waits until the end (a tar
        // may list a link before its target); chains of links inside the
        // layer resolve to their final target.
        let mut links: HashMap<&[Vec<u8>], &[Vec<u8>]> = HashMap::new();
        let mut last_write: HashMap<&[Vec<u8>], usize> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            match &e.op {
                Op::HardLink(t) => {
                    links.insert(&e.comps, t);
                }
                Op::Whiteout | Op::Opaque => {}
                _ => {
                    last_write.insert(&e.comps, i);
                }
            }
        }
        let mut deferred = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if is_aufs_meta(&e.comps) {
                // aufs metadata (`/.wh..wh.plnk/…`, `/.wh..wh.orph/…`) is
                // not part of the image. Files in `.wh..wh.plnk` are hard-link
                // targets of old aufs-built layers: kept aside for the links,
                // as Docker does.
                if let (Op::File(f), Some(b".wh..wh.plnk")) =
                    (&e.op, e.comps.first().map(Vec::as_slice))
                {
                    let id = self.tree.push_node(Node {
                        meta: e.meta.clone(),
                        kind: NodeKind::Regular { file: global[*f] },
                    });
                    lower_targets.insert(&e.comps, id);
                }
                continue;
            }
            match &e.op {
                Op::HardLink(target) => {
                    let mut t: &[Vec<u8>] = target;
                    for _ in 0..64 {
                        match links.get(t) {
                            Some(next) if *next != t => t = next,
                            _ => break,
                        }
                    }
                    if last_write.get(t).is_some_and(|&w| w > i) {
                        deferred.push((e, t));
                    } else {
                        self.apply_link(e, t, &lower_targets)?;
                    }
                }
                Op::Whiteout | Op::Opaque => {}
                _ => self
                    .apply_entry(e, &global)
                    .map_err(|r| entry_err(&e.raw, r))?,
            }
        }
        // 3. Hard links to targets written later in this layer.
        for (e, t) in deferred {
            self.apply_link(e, t, &lower_targets)?;
        }
        Ok((spool, digest))
    }

    /// Links `e`'s path to the node at `t` (or, if this layer's whiteouts
    /// removed it, to the node that was there before them; or to an aufs
    /// hard-link target of this layer).
    fn apply_link(
        &mut self,
        e: &LayerEntry,
        t: &[Vec<u8>],
        lower_targets: &HashMap<&[Vec<u8>], NodeId>,
    ) -> Result<(), LayerError> {
        let node = self.lookup(t).or_else(|| lower_targets.get(t).copied());
        let Some(node) = node else {
            return Err(entry_err(
                &e.raw,
                format!(
                    "hard link to missing target {:?}",
                    String::from_utf8_lossy(&t.join(&b'/'))
                ),
            ));
        };
        if matches!(self.tree.node(node).kind, NodeKind::Directory { .. }) {
            return Err(entry_err(&e.raw, "hard link to a directory"));
        }
        let Some((name, parent)) = e.comps.split_last() else {
            return Err(entry_err(&e.raw, "a hard link cannot replace /"));
        };
        let dir = self
            .resolve_dir(parent, true)
            .map_err(|r| entry_err(&e.raw, r))?
            .ok_or_else(|| entry_err(&e.raw, "parent not found"))?;
        self.entries_mut(dir).insert(name.clone(), node);
        Ok(())
    }

    /// Whether the layer replaces `dir` or one of its ancestors with
    /// something new: a non-directory, or a directory where the lower
    /// layers have none (only a symlink, a file, or nothing).
    fn replaced_by_layer(&mut self, dir: &[Vec<u8>], written: &HashMap<&[Vec<u8>], bool>) -> bool {
        for k in 1..=dir.len() {
            let Some(&is_dir) = written.get(&dir[..k]) else {
                continue;
            };
            if !is_dir {
                return true;
            }
            let lower_is_dir = self
                .lookup(&dir[..k])
                .is_some_and(|id| matches!(self.tree.node(id).kind, NodeKind::Directory { .. }));
            if !lower_is_dir {
                return true;
            }
        }
        false
    }

    /// The node at `path` (the last component not followed), if any.
    fn lookup(&mut self, path: &[Vec<u8>]) -> Option<NodeId> {
        let (name, parent) = path.split_last()?;
        match self.resolve_dir(parent, false) {
            Ok(Some(d)) => self.entries_mut(d).get(name).copied(),
            _ => None,
        }
    }

    fn apply_entry(&mut self, e: &LayerEntry, global: &[FileId]) -> Result<(), String> {
        let Some((name, parent)) = e.comps.split_last() else {
            return match e.op {
                Op::Dir => {
                    update_dir_meta(&mut self.tree.node_mut(Tree::ROOT).meta, &e.meta);
                    Ok(())
                }
                _ => Err("a layer cannot replace / with a non-directory".into()),
            };
        };
        let dir = self
            .resolve_dir(parent, true)?
            .ok_or_else(|| "parent not found".to_string())?;
        let existing = self.entries_mut(dir).get(name).copied();
        let kind = match &e.op {
            Op::Dir => {
                if let Some(id) = existing
                    && matches!(self.tree.node(id).kind, NodeKind::Directory { .. })
                {
                    update_dir_meta(&mut self.tree.node_mut(id).meta, &e.meta);
                    return Ok(());
                }
                NodeKind::Directory {
                    entries: BTreeMap::new(),
                }
            }
            Op::File(i) => NodeKind::Regular { file: global[*i] },
            Op::Symlink(t) => NodeKind::Symlink { target: t.clone() },
            Op::Char(major, minor) => NodeKind::CharDevice {
                major: *major,
                minor: *minor,
            },
            Op::Block(major, minor) => NodeKind::BlockDevice {
                major: *major,
                minor: *minor,
            },
            Op::Fifo => NodeKind::Fifo,
            Op::HardLink(_) | Op::Whiteout | Op::Opaque => return Ok(()),
        };
        let id = self.tree.push_node(Node {
            meta: e.meta.clone(),
            kind,
        });
        self.entries_mut(dir).insert(name.clone(), id);
        Ok(())
    }

    /// The finished tree: unreachable nodes dropped, nodes numbered in
    /// depth-first name order (so ids depend only on the final tree).
    pub(crate) fn finish(self) -> Tree {
        let old = self.tree;
        let mut new_id = vec![u32::MAX; old.nodes.len()];
        let mut order: Vec<NodeId> = vec![Tree::ROOT];
        new_id[0] = 0;
        let mut stack = vec![Tree::ROOT];
        while let Some(id) = stack.pop() {
            if let NodeKind::Directory { entries } = &old.node(id).kind {
                let mut fresh = Vec::new();
                for &child in entries.values() {
                    if new_id[child.0 as usize] == u32::MAX {
                        new_id[child.0 as usize] = order.len() as u32;
                        order.push(child);
                        fresh.push(child);
                    }
                }
                // Depth-first, children in name order.
                stack.extend(fresh.into_iter().rev());
            }
        }
        let nodes = order
            .iter()
            .map(|&id| {
                let mut n = old.node(id).clone();
                if let NodeKind::Directory { entries } = &mut n.kind {
                    for v in entries.values_mut() {
                        *v = NodeId(new_id[v.0 as usize]);
                    }
                }
                n
            })
            .collect();
        Tree {
            nodes,
            files: old.files,
            layers: old.layers,
        }
    }
}

/// A digest of a layer's content that ignores tar entry order,
/// compression and archive format: its entries sorted by path, each with
/// its operation, metadata and a hash of its data.
fn content_digest(entries: &[LayerEntry], files: &[FileData], hashes: &[u128]) -> Digest {
    fn bytes(h: &mut Sha256, b: &[u8]) {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    fn path(h: &mut Sha256, p: &[Vec<u8>]) {
        h.update((p.len() as u64).to_le_bytes());
        for c in p {
            bytes(h, c);
        }
    }
    let mut h = Sha256::new();
    h.update(b"lode-layer-content-v1\0");
    for e in entries {
        path(&mut h, &e.comps);
        match &e.op {
            Op::Dir => h.update(b"d"),
            Op::File(i) => {
                h.update(b"f");
                h.update(files[*i].size.to_le_bytes());
                for x in &files[*i].extents {
                    h.update(x.file_offset.to_le_bytes());
                    h.update(x.len.to_le_bytes());
                }
                h.update(hashes[*i].to_le_bytes());
            }
            Op::HardLink(t) => {
                h.update(b"h");
                path(&mut h, t);
            }
            Op::Symlink(t) => {
                h.update(b"s");
                bytes(&mut h, t);
            }
            Op::Char(a, b) | Op::Block(a, b) => {
                h.update(if matches!(e.op, Op::Char(..)) {
                    b"c"
                } else {
                    b"b"
                });
                h.update(a.to_le_bytes());
                h.update(b.to_le_bytes());
            }
            Op::Fifo => h.update(b"p"),
            Op::Whiteout => h.update(b"w"),
            Op::Opaque => h.update(b"o"),
        }
        let m = &e.meta;
        h.update(m.mode.to_le_bytes());
        h.update(m.uid.to_le_bytes());
        h.update(m.gid.to_le_bytes());
        h.update(m.mtime.sec.to_le_bytes());
        h.update(m.mtime.nsec.to_le_bytes());
        h.update((m.xattrs.len() as u64).to_le_bytes());
        for (k, v) in &m.xattrs {
            bytes(&mut h, k);
            bytes(&mut h, v);
        }
    }
    Digest::from_hasher(h)
}

/// A directory entry over an existing directory keeps the children and
/// takes all of the entry's metadata, xattrs included: the OCI spec
/// represents a modification as the new state, overlayfs shows the upper
/// directory's xattrs only, and umoci clears the old ones.
fn update_dir_meta(m: &mut Metadata, new: &Metadata) {
    *m = new.clone();
}

/// Spooled file contents of every layer: one anonymous temporary file per
/// layer, deleted when dropped.
#[derive(Debug)]
pub struct FileSpool {
    pub(crate) layers: Vec<File>,
}

impl crate::tree::Spool for FileSpool {
    fn read_at(&self, layer: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.layers
            .get(layer as usize)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no spool for layer {layer}"),
                )
            })?
            .read_exact_at(buf, offset)
    }
}
