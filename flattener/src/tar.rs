//! A streaming tar reader that understands what container layers contain:
//! ustar, GNU (long names, long links, old sparse, base-256 numbers) and PAX
//! (path, linkpath, size, uid, gid, mtime with nanoseconds, `SCHILY.xattr.*`,
//! GNU sparse 0.0, 0.1 and 1.0).
//!
//! It reads strictly forward, holds one entry's metadata at a time and hands
//! the data to a sink, so memory never grows with file sizes. Every malformed
//! input is an error with the byte offset of the header that caused it.
//!
//! Where tar readers disagree it reads as Go's archive/tar does (containerd,
//! Docker and umoci use it): GNU long names beat PAX paths, a second PAX
//! header replaces the first, an empty PAX value keeps the header field, the
//! archive ends at two zero blocks, and header-only entry types carry no
//! data when a valid header follows them. What GNU tar, Go's archive/tar
//! and Python's tarfile all accept is accepted, e.g. PAX numbers and record
//! lengths with any number of leading zeros (`size=000…0999`); what they all
//! refuse (a PAX size past 2^63) is refused.

use std::collections::BTreeMap;
use std::io::{self, Read};

use crate::tree::Timestamp;

const BLOCK: usize = 512;
/// Largest PAX header, GNU long name or sparse map we accept (they hold
/// names and xattrs, never file data).
const MAX_META: u64 = 16 << 20;
/// Largest number of sparse segments in one file.
const MAX_SPARSE_SEGMENTS: u64 = 1 << 20;

/// What went wrong while reading a tar stream.
#[derive(Debug)]
pub(crate) enum TarError {
    /// The underlying reader failed (decompression, I/O).
    Io(io::Error),
    /// The stream ended inside an entry.
    Truncated { offset: u64 },
    /// The bytes are not a valid tar stream.
    Malformed { offset: u64, reason: String },
}

impl TarError {
    fn malformed(offset: u64, reason: impl Into<String>) -> Self {
        Self::Malformed {
            offset,
            reason: reason.into(),
        }
    }
}

/// Type of a tar entry after the meta entries (PAX, GNU long names) are folded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryType {
    Regular,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
}

/// One entry's metadata.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) path: Vec<u8>,
    pub(crate) link: Vec<u8>,
    pub(crate) kind: EntryType,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: Timestamp,
    pub(crate) devmajor: u32,
    pub(crate) devminor: u32,
    pub(crate) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Apparent file size (the real size for sparse files).
    pub(crate) size: u64,
    /// `(offset, len)` runs present in the archive, for sparse files.
    pub(crate) sparse: Option<Vec<(u64, u64)>>,
    /// Offset of the entry's first header in the stream.
    pub(crate) offset: u64,
}

/// Records of a PAX extended header, interpreted.
#[derive(Default, Clone)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<Timestamp>,
    devmajor: Option<u32>,
    devminor: Option<u32>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    sparse_major: Option<u64>,
    sparse_minor: Option<u64>,
    sparse_name: Option<Vec<u8>>,
    sparse_realsize: Option<u64>,
    sparse_map: Vec<u64>,
    sparse_seen: bool,
}

/// Streaming reader; call [`TarReader::next_entry`], then optionally
/// [`TarReader::read_data`] before the next call.
pub(crate) struct TarReader<R: Read> {
    r: R,
    pos: u64,
    /// Data bytes of the current entry not yet consumed.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    global: Pax,
    done: bool,
    /// Reused for file data (allocated once, not per entry).
    data_buf: Vec<u8>,
    /// A block read ahead and put back (see `build_entry`), served first.
    unread: Option<[u8; BLOCK]>,
    unread_pos: usize,
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(r: R) -> Self {
        Self {
            r,
            pos: 0,
            remaining: 0,
            padding: 0,
            global: Pax::default(),
            done: false,
            data_buf: Vec::new(),
            unread: None,
            unread_pos: 0,
        }
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Reads from the put-back block first, then from the stream.
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(b) = &self.unread {
            let n = buf.len().min(BLOCK - self.unread_pos);
            buf[..n].copy_from_slice(&b[self.unread_pos..self.unread_pos + n]);
            self.unread_pos += n;
            if self.unread_pos == BLOCK {
                self.unread = None;
            }
            return Ok(n);
        }
        self.r.read(buf)
    }

    /// Puts back the block just read (at most one at a time).
    fn unread_block(&mut self, b: [u8; BLOCK]) {
        debug_assert!(self.unread.is_none());
        self.unread = Some(b);
        self.unread_pos = 0;
        self.pos -= BLOCK as u64;
    }

    fn read_exact(&mut self, buf: &mut [u8], entry_offset: u64) -> Result<(), TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_some(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(TarError::Truncated {
                        offset: entry_offset,
                    });
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads a header block; `Ok(None)` on a clean end of stream.
    fn read_block_or_eof(&mut self) -> Result<Option<[u8; BLOCK]>, TarError> {
        let mut b = [0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match self.read_some(&mut b[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(TarError::Truncated { offset: self.pos }),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.pos += BLOCK as u64;
        Ok(Some(b))
    }

    fn skip(&mut self, mut n: u64, entry_offset: u64) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..k], entry_offset)?;
            n -= k as u64;
        }
        Ok(())
    }

    fn finish_current(&mut self, entry_offset: u64) -> Result<(), TarError> {
        let n = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        self.skip(n, entry_offset)
    }

    fn read_meta_data(&mut self, size: u64, offset: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_META {
            return Err(TarError::malformed(
                offset,
                format!("metadata entry of {size} bytes is larger than the {MAX_META}-byte limit"),
            ));
        }
        let mut v = vec![0u8; size as usize];
        self.read_exact(&mut v, offset)?;
        self.skip(pad(size), offset)?;
        Ok(v)
    }

    /// The next entry, or `None` at the end of the archive.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        // The caller may not have read the previous entry's data.
        let prev = self.pos;
        self.finish_current(prev)?;
        let mut pax: Option<Pax> = None;
        let mut gnu_name: Option<Vec<u8>> = None;
        let mut gnu_link: Option<Vec<u8>> = None;
        let mut first_offset: Option<u64> = None;
        loop {
            let offset = self.pos;
            let Some(h) = self.read_block_or_eof()? else {
                if first_offset.is_some() {
                    return Err(TarError::Truncated { offset });
                }
                // A stream that ends on a header boundary without the two
                // zero blocks is accepted, like Go's archive/tar does.
                self.done = true;
                return Ok(None);
            };
            if h.iter().all(|&b| b == 0) {
                if let Some(o) = first_offset {
                    return Err(TarError::malformed(
                        o,
                        "meta entry followed by end of archive",
                    ));
                }
                // End of archive: two zero blocks (or one at the end of the
                // stream). A lone zero block followed by anything else is an
                // error, as in Go's archive/tar (containerd, umoci): the
                // entries after it must not vanish silently. Bytes after the
                // two zero blocks are ignored (and still hashed).
                if let Some(next) = self.read_block_or_eof()?
                    && next.iter().any(|&b| b != 0)
                {
                    return Err(TarError::malformed(
                        offset,
                        "a single zero block followed by more data (end of archive needs two)",
                    ));
                }
                self.done = true;
                return Ok(None);
            }
            let start = *first_offset.get_or_insert(offset);
            verify_checksum(&h, offset)?;
            let typeflag = h[156];
            let size_field = parse_u64(&h[124..136], offset, "size")?;
            match typeflag {
                b'x' | b'g' => {
                    let data = self.read_meta_data(size_field, offset)?;
                    if typeflag == b'g' {
                        parse_pax(&data, &mut self.global, offset)?;
                    } else {
                        // A second extended header replaces the first (as
                        // in Go's archive/tar and Python's tarfile).
                        let p = pax.insert(self.global.clone());
                        parse_pax(&data, p, offset)?;
                    }
                    continue;
                }
                b'L' | b'K' => {
                    let mut data = self.read_meta_data(size_field, offset)?;
                    if let Some(n) = data.iter().position(|&b| b == 0) {
                        data.truncate(n);
                    }
                    if typeflag == b'L' {
                        gnu_name = Some(data);
                    } else {
                        gnu_link = Some(data);
                    }
                    continue;
                }
                b'V' => {
                    // Volume label: not a file.
                    self.skip(size_field + pad(size_field), offset)?;
                    first_offset = None;
                    pax = None;
                    continue;
                }
                _ => {}
            }
            let pax = pax.unwrap_or_else(|| self.global.clone());
            return self
                .build_entry(
                    &h, start, offset, typeflag, size_field, pax, gnu_name, gnu_link,
                )
                .map(Some);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build_entry(
        &mut self,
        h: &[u8; BLOCK],
        start: u64,
        offset: u64,
        typeflag: u8,
        size_field: u64,
        pax: Pax,
        gnu_name: Option<Vec<u8>>,
        gnu_link: Option<Vec<u8>>,
    ) -> Result<Entry, TarError> {
        let magic = &h[257..265];
        let ustar = &magic[..6] == b"ustar\0";
        let gnu = magic == b"ustar  \0";
        let kind = match typeflag {
            b'0' | 0 | b'7' | b'S' => EntryType::Regular,
            b'1' => EntryType::HardLink,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::CharDevice,
            b'4' => EntryType::BlockDevice,
            b'5' | b'D' => EntryType::Directory,
            b'6' => EntryType::Fifo,
            other => {
                return Err(TarError::malformed(
                    offset,
                    format!("unsupported entry type {:?}", char::from(other)),
                ));
            }
        };
        // A GNU long name or link overrides PAX `path`/`linkpath` when an
        // entry has both, as in Go's archive/tar (containerd, umoci); an
        // empty one overrides nothing.
        let gnu_name = gnu_name.filter(|n| !n.is_empty());
        let gnu_link = gnu_link.filter(|n| !n.is_empty());
        let mut path = if let Some(n) = gnu_name {
            n
        } else if let Some(p) = pax.path.clone() {
            p
        } else {
            let name = cstr(&h[0..100]);
            let prefix = if ustar { cstr(&h[345..500]) } else { &[][..] };
            if prefix.is_empty() {
                name.to_vec()
            } else {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(name);
                p
            }
        };
        let link = gnu_link
            .or_else(|| pax.linkpath.clone())
            .unwrap_or_else(|| cstr(&h[157..257]).to_vec());
        let mode = parse_u64(&h[100..108], offset, "mode")? as u32 & 0o7777;
        let uid = match pax.uid {
            Some(u) => u,
            None => to_u32(parse_u64(&h[108..116], offset, "uid")?, offset, "uid")?,
        };
        let gid = match pax.gid {
            Some(g) => g,
            None => to_u32(parse_u64(&h[116..124], offset, "gid")?, offset, "gid")?,
        };
        let mtime = match pax.mtime {
            Some(t) => t,
            None => Timestamp {
                sec: parse_i64(&h[136..148], offset, "mtime")?,
                nsec: 0,
            },
        };
        let (devmajor, devminor) = if ustar || gnu {
            (
                match pax.devmajor {
                    Some(v) => v,
                    None => to_u32(
                        parse_u64(&h[329..337], offset, "devmajor")?,
                        offset,
                        "devmajor",
                    )?,
                },
                match pax.devminor {
                    Some(v) => v,
                    None => to_u32(
                        parse_u64(&h[337..345], offset, "devminor")?,
                        offset,
                        "devminor",
                    )?,
                },
            )
        } else {
            (pax.devmajor.unwrap_or(0), pax.devminor.unwrap_or(0))
        };
        let data_len = pax.size.unwrap_or(size_field);
        let mut size = data_len;
        let mut sparse = None;
        let mut stored = data_len;
        self.remaining = data_len;
        self.padding = pad(data_len);
        // Hard links, symlinks, devices, directories and FIFOs have no data,
        // but a header may still carry a size. Go's archive/tar (containerd,
        // umoci) and Python's tarfile ignore it and read the next header
        // right away; POSIX pax lets a hard link carry data. So: if a valid
        // header or the end of the archive follows, there is no data;
        // otherwise the data is skipped.
        let header_only = matches!(typeflag, b'1'..=b'6')
            || (typeflag == 0 && kind == EntryType::Regular && path.ends_with(b"/"));
        if header_only && data_len > 0 {
            match self.read_block_or_eof()? {
                None => {
                    self.remaining = 0;
                    self.padding = 0;
                }
                Some(next) => {
                    if next.iter().all(|&b| b == 0) || verify_checksum(&next, self.pos).is_ok() {
                        self.remaining = 0;
                        self.padding = 0;
                    }
                    self.unread_block(next);
                }
            }
        }

        if typeflag == b'S' {
            // Old GNU sparse: map in the header, maybe continued in
            // extension blocks; the real size in the header.
            if !gnu {
                return Err(TarError::malformed(
                    offset,
                    "GNU sparse entry without GNU magic",
                ));
            }
            let mut map = Vec::new();
            read_old_sparse(&h[386..482], &mut map, offset)?;
            let mut extended = h[482] != 0;
            while extended {
                let ext_offset = self.pos;
                let mut b = [0u8; BLOCK];
                self.read_exact(&mut b, start)?;
                read_old_sparse(&b[..504], &mut map, ext_offset)?;
                extended = b[504] != 0;
                if map.len() as u64 > MAX_SPARSE_SEGMENTS {
                    return Err(TarError::malformed(offset, "too many sparse segments"));
                }
            }
            size = parse_u64(&h[483..495], offset, "realsize")?;
            sparse = Some(map);
        } else if pax.sparse_seen && kind == EntryType::Regular {
            if let Some(n) = pax.sparse_name.clone() {
                path = n;
            }
            size = pax.sparse_realsize.ok_or_else(|| {
                TarError::malformed(offset, "PAX sparse file without a real size")
            })?;
            let major = pax.sparse_major.unwrap_or(0);
            let minor = pax.sparse_minor.unwrap_or(0);
            if major == 1 && minor == 0 {
                // Map at the start of the data, in decimal lines, padded to a block.
                let (map, used) = self.read_pax1_map(start)?;
                stored = data_len - used;
                sparse = Some(map);
            } else if major == 0 {
                if !pax.sparse_map.len().is_multiple_of(2) {
                    return Err(TarError::malformed(
                        offset,
                        "odd number of sparse map values",
                    ));
                }
                sparse = Some(pax.sparse_map.chunks(2).map(|c| (c[0], c[1])).collect());
            } else {
                return Err(TarError::malformed(
                    offset,
                    format!("unsupported GNU sparse format {major}.{minor}"),
                ));
            }
        }

        if let Some(map) = &mut sparse {
            map.retain(|&(_, len)| len > 0);
            let mut end = 0u64;
            let mut total = 0u64;
            for &(o, l) in map.iter() {
                let e = o
                    .checked_add(l)
                    .ok_or_else(|| TarError::malformed(offset, "sparse segment overflows"))?;
                if o < end || e > size {
                    return Err(TarError::malformed(
                        offset,
                        "sparse map out of order, overlapping or beyond the file size",
                    ));
                }
                end = e;
                total += l;
            }
            if total != stored {
                return Err(TarError::malformed(
                    offset,
                    format!("sparse map covers {total} bytes but {stored} are stored"),
                ));
            }
        }

        // Old tars mark directories by a trailing slash on a NUL-type entry
        // (Go's archive/tar does the same).
        let kind = if typeflag == 0 && kind == EntryType::Regular && path.ends_with(b"/") {
            EntryType::Directory
        } else {
            kind
        };
        let kind_has_data = matches!(kind, EntryType::Regular);
        if !kind_has_data {
            size = 0;
        }
        Ok(Entry {
            path,
            link,
            kind,
            mode,
            uid,
            gid,
            mtime,
            devmajor,
            devminor,
            xattrs: pax.xattrs,
            size,
            sparse,
            offset: start,
        })
    }

    /// Reads the PAX 1.0 sparse map from the data; returns it and the bytes used.
    fn read_pax1_map(&mut self, offset: u64) -> Result<(Vec<(u64, u64)>, u64), TarError> {
        let mut used = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        let mut pos_in_buf = 0usize;
        let mut numbers = Vec::new();
        let mut want: Option<u64> = None;
        loop {
            if let Some(w) = want
                && numbers.len() as u64 == 1 + 2 * w
            {
                break;
            }
            // Next decimal line.
            let line_end = loop {
                if let Some(i) = buf[pos_in_buf..].iter().position(|&b| b == b'\n') {
                    break pos_in_buf + i;
                }
                if self.remaining < BLOCK as u64 || buf.len() as u64 > MAX_META {
                    return Err(TarError::malformed(
                        offset,
                        "unterminated PAX 1.0 sparse map",
                    ));
                }
                let mut b = [0u8; BLOCK];
                self.read_exact(&mut b, offset)?;
                self.remaining -= BLOCK as u64;
                used += BLOCK as u64;
                buf.extend_from_slice(&b);
            };
            let s = &buf[pos_in_buf..line_end];
            let n = parse_decimal(s)
                .ok_or_else(|| TarError::malformed(offset, "bad number in PAX 1.0 sparse map"))?;
            pos_in_buf = line_end + 1;
            if want.is_none() {
                if n > MAX_SPARSE_SEGMENTS {
                    return Err(TarError::malformed(offset, "too many sparse segments"));
                }
                want = Some(n);
            }
            numbers.push(n);
        }
        let map = numbers[1..].chunks(2).map(|c| (c[0], c[1])).collect();
        Ok((map, used))
    }

    /// Streams the current entry's stored data to `sink(file_offset, bytes)`.
    /// Sparse files get their runs at the right file offsets.
    pub(crate) fn read_data(
        &mut self,
        entry: &Entry,
        sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<(), TarError> {
        let single = [(0u64, self.remaining)];
        let runs: &[(u64, u64)] = match &entry.sparse {
            Some(m) => m,
            None => &single,
        };
        let mut buf = std::mem::take(&mut self.data_buf);
        if buf.is_empty() {
            buf = vec![0u8; 1 << 20];
        }
        let result = self.copy_runs(entry, runs, &mut buf, sink);
        self.data_buf = buf;
        result?;
        self.finish_current(entry.offset)
    }

    fn copy_runs(
        &mut self,
        entry: &Entry,
        runs: &[(u64, u64)],
        buf: &mut [u8],
        sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<(), TarError> {
        for &(off, len) in runs {
            let mut done = 0u64;
            while done < len {
                let k = (len - done).min(buf.len() as u64) as usize;
                if k as u64 > self.remaining {
                    return Err(TarError::malformed(
                        entry.offset,
                        "sparse map beyond stored data",
                    ));
                }
                self.read_exact(&mut buf[..k], entry.offset)?;
                self.remaining -= k as u64;
                sink(off + done, &buf[..k]).map_err(TarError::Io)?;
                done += k as u64;
            }
        }
        Ok(())
    }
}

fn read_old_sparse(b: &[u8], map: &mut Vec<(u64, u64)>, offset: u64) -> Result<(), TarError> {
    for e in b.chunks_exact(24) {
        if e[0] == 0 {
            break;
        }
        let o = parse_u64(&e[..12], offset, "sparse offset")?;
        let l = parse_u64(&e[12..], offset, "sparse length")?;
        map.push((o, l));
    }
    Ok(())
}

fn pad(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

fn to_u32(v: u64, offset: u64, field: &str) -> Result<u32, TarError> {
    u32::try_from(v).map_err(|_| TarError::malformed(offset, format!("{field} {v} out of range")))
}

fn verify_checksum(h: &[u8; BLOCK], offset: u64) -> Result<(), TarError> {
    let stored = parse_u64(&h[148..156], offset, "checksum")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(TarError::malformed(
            offset,
            "header checksum mismatch (not a tar header)",
        ))
    }
}

/// Parses a numeric header field: octal text or GNU base-256.
fn parse_num(f: &[u8], offset: u64, field: &str) -> Result<i128, TarError> {
    if f.first().is_some_and(|&b| b & 0x80 != 0) {
        let negative = f[0] == 0xff;
        let mut v: i128 = if negative {
            -1
        } else {
            i128::from(f[0] & 0x7f)
        };
        for &b in &f[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(i128::from(b)))
                .ok_or_else(|| TarError::malformed(offset, format!("{field} out of range")))?;
        }
        return Ok(v);
    }
    let mut v: i128 = 0;
    let mut i = 0;
    while i < f.len() && (f[i] == b' ' || f[i] == 0) {
        i += 1;
    }
    let mut digits = 0;
    while i < f.len() && (b'0'..=b'7').contains(&f[i]) {
        v = v * 8 + i128::from(f[i] - b'0');
        i += 1;
        digits += 1;
    }
    if f[i..].iter().any(|&b| b != b' ' && b != 0)
        || (digits == 0 && i < f.len() && f[i] != 0 && f[i] != b' ')
    {
        return Err(TarError::malformed(offset, format!("bad {field} field")));
    }
    Ok(v)
}

fn parse_u64(f: &[u8], offset: u64, field: &str) -> Result<u64, TarError> {
    let v = parse_num(f, offset, field)?;
    u64::try_from(v).map_err(|_| TarError::malformed(offset, format!("{field} {v} out of range")))
}

fn parse_i64(f: &[u8], offset: u64, field: &str) -> Result<i64, TarError> {
    let v = parse_num(f, offset, field)?;
    i64::try_from(v).map_err(|_| TarError::malformed(offset, format!("{field} {v} out of range")))
}

/// A PAX decimal number: ASCII digits only, any number of leading zeros
/// (GNU tar, Go's archive/tar and Python's tarfile all take them), at most
/// `u64::MAX`. No sign, spaces or underscores: GNU tar refuses them.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses a PAX time (`-?\d+(\.\d+)?`) into seconds and nanoseconds.
pub(crate) fn parse_pax_time(s: &[u8]) -> Option<Timestamp> {
    let (neg, s) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let (int, frac) = match s.iter().position(|&b| b == b'.') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[][..]),
    };
    let sec = parse_decimal(int)?;
    let sec = i64::try_from(sec).ok()?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nsec: u32 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |&b| u32::from(b - b'0'));
    }
    if !neg {
        Some(Timestamp { sec, nsec })
    } else if nsec == 0 {
        Some(Timestamp { sec: -sec, nsec: 0 })
    } else {
        Some(Timestamp {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        })
    }
}

fn parse_pax(data: &[u8], p: &mut Pax, offset: u64) -> Result<(), TarError> {
    let bad = |why: &str| TarError::malformed(offset, format!("bad PAX record: {why}"));
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length"))?;
        let len = parse_decimal(&rest[..sp]).ok_or_else(|| bad("length"))? as usize;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad("length does not match"));
        }
        let rec = &rest[sp + 1..len - 1];
        rest = &rest[len..];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no '='"))?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        let num = |v: &[u8]| parse_decimal(v).ok_or_else(|| bad("number"));
        if value.is_empty() && !key.starts_with(b"GNU.sparse.") {
            // POSIX: an empty value deletes the keyword (a global value
            // too), so the header field counts; Go's archive/tar keeps the
            // header field as well, and so never sets an empty xattr.
            match key {
                b"path" => p.path = None,
                b"linkpath" => p.linkpath = None,
                b"size" => p.size = None,
                b"uid" => p.uid = None,
                b"gid" => p.gid = None,
                b"mtime" => p.mtime = None,
                b"SCHILY.devmajor" => p.devmajor = None,
                b"SCHILY.devminor" => p.devminor = None,
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        p.xattrs.remove(name);
                    }
                }
            }
            continue;
        }
        match key {
            b"path" => p.path = Some(value.to_vec()),
            b"linkpath" => p.linkpath = Some(value.to_vec()),
            b"size" => p.size = Some(num(value)?),
            b"uid" => p.uid = Some(u32::try_from(num(value)?).map_err(|_| bad("uid range"))?),
            b"gid" => p.gid = Some(u32::try_from(num(value)?).map_err(|_| bad("gid range"))?),
            b"mtime" => p.mtime = Some(parse_pax_time(value).ok_or_else(|| bad("mtime"))?),
            b"SCHILY.devmajor" => {
                p.devmajor = Some(u32::try_from(num(value)?).map_err(|_| bad("devmajor"))?);
            }
            b"SCHILY.devminor" => {
                p.devminor = Some(u32::try_from(num(value)?).map_err(|_| bad("devminor"))?);
            }
            b"GNU.sparse.major" => {
                p.sparse_major = Some(num(value)?);
                p.sparse_seen = true;
            }
            b"GNU.sparse.minor" => {
                p.sparse_minor = Some(num(value)?);
                p.sparse_seen = true;
            }
            b"GNU.sparse.name" => {
                p.sparse_name = Some(value.to_vec());
                p.sparse_seen = true;
            }
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                p.sparse_realsize = Some(num(value)?);
                p.sparse_seen = true;
            }
            b"GNU.sparse.numblocks" => {
                if num(value)? > MAX_SPARSE_SEGMENTS {
                    return Err(bad("too many sparse segments"));
                }
                p.sparse_seen = true;
            }
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                p.sparse_map.push(num(value)?);
                p.sparse_seen = true;
            }
            b"GNU.sparse.map" => {
                p.sparse_seen = true;
                p.sparse_map.clear();
                if !value.is_empty() {
                    for n in value.split(|&b| b == b',') {
                        p.sparse_map.push(num(n)?);
                    }
                }
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if name.is_empty() {
                        return Err(bad("empty xattr name"));
                    }
                    p.xattrs.insert(name.to_vec(), value.to_vec());
                }
            }
        }
        if p.sparse_map.len() as u64 > 2 * MAX_SPARSE_SEGMENTS {
            return Err(bad("too many sparse segments"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1.5"),
            Some(Timestamp {
                sec: 1,
                nsec: 500_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(Timestamp {
                sec: -2,
                nsec: 750_000_000
            })
        );
        assert_eq!(parse_pax_time(b"-7"), Some(Timestamp { sec: -7, nsec: 0 }));
        assert_eq!(
            parse_pax_time(b"4102444800.1234567891"),
            Some(Timestamp {
                sec: 4_102_444_800,
                nsec: 123_456_789
            })
        );
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.2x"), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_num(b"0000644\0", 0, "m").unwrap(), 0o644);
        assert_eq!(parse_num(b"   12 \0", 0, "m").unwrap(), 0o12);
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 5;
        b256[10] = 1;
        assert_eq!(parse_num(&b256, 0, "s").unwrap(), 261);
        let neg = [0xffu8; 12];
        assert_eq!(parse_num(&neg, 0, "t").unwrap(), -1);
        assert!(parse_num(b"12x4", 0, "m").is_err());
    }

    #[test]
    fn decimals_take_leading_zeros_but_nothing_else() {
        assert_eq!(parse_decimal(b"000000000000000000000999"), Some(999));
        assert_eq!(parse_decimal(&[b'0'; 4096]), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"0018446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        for bad in [&b""[..], b"+1", b"-1", b" 1", b"1 ", b"1_0", b"0x1"] {
            assert_eq!(
                parse_decimal(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_pax_time(b"000000000000000000001700000000.5"),
            Some(Timestamp {
                sec: 1_700_000_000,
                nsec: 500_000_000
            })
        );
    }
}
