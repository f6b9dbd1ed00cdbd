//! Fixed-size chunking with hole detection.

use std::io::{self, Read};

use crate::error::{Error, Result};

/// The chunk size of lode images: 512 KiB.
pub const DEFAULT_CHUNK_SIZE: usize = 512 * 1024;
/// Smallest chunk size [`Chunker::new`] accepts: 4 KiB (one ext4 block).
pub const MIN_CHUNK_SIZE: usize = 4 * 1024;
/// Largest chunk size [`Chunker::new`] accepts: 16 MiB.
pub const MAX_CHUNK_SIZE: usize = 16 * 1024 * 1024;

/// Cuts bytes into fixed-size chunks; the last one may be short.
///
/// Chunks whose bytes are all zero are reported as [`ChunkData::Hole`]: they
/// are never sealed or stored, readers fill them with zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunker {
    chunk_size: usize,
}

impl Default for Chunker {
    /// A chunker with [`DEFAULT_CHUNK_SIZE`].
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

impl Chunker {
    /// A chunker for `chunk_size`, which must be a power of two from 4 KiB
    /// to 16 MiB.
    pub fn new(chunk_size: usize) -> Result<Self> {
        if chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            Ok(Self { chunk_size })
        } else {
            Err(Error::InvalidChunkSize { size: chunk_size })
        }
    }

    /// The size of every chunk but possibly the last.
    pub const fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Number of chunks for `len` bytes of input.
    pub const fn chunk_count(&self, len: u64) -> u64 {
        len.div_ceil(self.chunk_size as u64)
    }

    /// Chunks of an in-memory slice, borrowing from it.
    pub fn split<'a>(&self, data: &'a [u8]) -> Split<'a> {
        Split {
            chunks: data.chunks(self.chunk_size),
            chunk_size: self.chunk_size,
            index: 0,
        }
    }

    /// Chunks read from `reader`, each in its own buffer.
    ///
    /// Each data buffer has spare capacity for the GCM tag, so
    /// [`seal_owned`](crate::seal_owned) seals it in place without copying.
    ///
    /// Short reads and `Interrupted` are handled; every chunk but the last is
    /// full. An I/O error is yielded once (its message names the offset of
    /// the chunk being read, its kind is kept), then the iterator ends.
    pub fn reader<R: Read>(&self, reader: R) -> ReadChunks<R> {
        ReadChunks {
            reader,
            chunk_size: self.chunk_size,
            index: 0,
            offset: 0,
            spare: Vec::new(),
            done: false,
        }
    }
}

/// The bytes of one chunk, or a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkData<'a> {
    /// A chunk with at least one non-zero byte.
    Data(&'a [u8]),
    /// `len` zero bytes: never sealed, never stored.
    Hole {
        /// Length of the hole.
        len: usize,
    },
}

impl ChunkData<'_> {
    /// Length in bytes, hole or not.
    pub const fn len(&self) -> usize {
        match self {
            Self::Data(d) => d.len(),
            Self::Hole { len } => *len,
        }
    }

    /// True for a zero-length chunk (never produced by a chunker).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a hole.
    pub const fn is_hole(&self) -> bool {
        matches!(self, Self::Hole { .. })
    }
}

/// One chunk of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Position in the chunk sequence, from 0.
    pub index: u64,
    /// Byte offset in the input (`index * chunk_size`).
    pub offset: u64,
    /// Its bytes or a hole.
    pub data: ChunkData<'a>,
}

/// The bytes of one chunk read from a `Read`, or a hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedChunkData {
    /// A chunk with at least one non-zero byte.
    Data(Vec<u8>),
    /// `len` zero bytes.
    Hole {
        /// Length of the hole.
        len: usize,
    },
}

/// One chunk read from a `Read`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedChunk {
    /// Position in the chunk sequence, from 0.
    pub index: u64,
    /// Byte offset in the input.
    pub offset: u64,
    /// Its bytes or a hole.
    pub data: OwnedChunkData,
}

impl OwnedChunk {
    /// A borrowed view, the same type [`Chunker::split`] yields.
    pub fn as_chunk(&self) -> Chunk<'_> {
        Chunk {
            index: self.index,
            offset: self.offset,
            data: match &self.data {
                OwnedChunkData::Data(d) => ChunkData::Data(d),
                OwnedChunkData::Hole { len } => ChunkData::Hole { len: *len },
            },
        }
    }
}

/// Iterator returned by [`Chunker::split`].
#[derive(Debug, Clone)]
pub struct Split<'a> {
    chunks: std::slice::Chunks<'a, u8>,
    chunk_size: usize,
    index: u64,
}

impl<'a> Iterator for Split<'a> {
    type Item = Chunk<'a>;

    fn next(&mut self) -> Option<Chunk<'a>> {
        let bytes = self.chunks.next()?;
        let index = self.index;
        self.index += 1;
        Some(Chunk {
            index,
            offset: index * self.chunk_size as u64,
            data: classify(bytes),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for Split<'_> {}
impl std::iter::FusedIterator for Split<'_> {}

fn classify(bytes: &[u8]) -> ChunkData<'_> {
    if is_all_zero(bytes) {
        ChunkData::Hole { len: bytes.len() }
    } else {
        ChunkData::Data(bytes)
    }
}

/// Iterator returned by [`Chunker::reader`].
#[derive(Debug)]
pub struct ReadChunks<R> {
    reader: R,
    chunk_size: usize,
    index: u64,
    offset: u64,
    /// A buffer that held a hole, reused for the next chunk.
    spare: Vec<u8>,
    done: bool,
}

impl<R> ReadChunks<R> {
    /// Gives back the reader.
    pub fn into_inner(self) -> R {
        self.reader
    }
}

impl<R: Read> ReadChunks<R> {
    /// Fills `buf` (of chunk size) as far as the input goes; returns the count.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

impl<R: Read> Iterator for ReadChunks<R> {
    type Item = io::Result<OwnedChunk>;

    fn next(&mut self) -> Option<io::Result<OwnedChunk>> {
        if self.done {
            return None;
        }
        let mut buf = std::mem::take(&mut self.spare);
        if buf.capacity() == 0 {
            // Room for the GCM tag, so `seal_owned` encrypts without a copy.
            buf.reserve_exact(self.chunk_size + crate::provider::TAG_LEN);
        }
        buf.resize(self.chunk_size, 0);
        let filled = match self.fill(&mut buf) {
            Ok(n) => n,
            Err(source) => {
                self.done = true;
                let kind = source.kind();
                return Some(Err(io::Error::new(
                    kind,
                    Error::Io {
                        offset: self.offset,
                        source,
                    },
                )));
            }
        };
        if filled < self.chunk_size {
            self.done = true;
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        let data = if is_all_zero(&buf) {
            self.spare = buf;
            OwnedChunkData::Hole { len: filled }
        } else {
            OwnedChunkData::Data(buf)
        };
        let chunk = OwnedChunk {
            index: self.index,
            offset: self.offset,
            data,
        };
        self.index += 1;
        self.offset += filled as u64;
        Some(Ok(chunk))
    }
}

impl<R: Read> std::iter::FusedIterator for ReadChunks<R> {}

/// True when every byte of `data` is zero.
///
/// Reads eight bytes at a time and stops at the first 64-byte block with a
/// non-zero byte; runs at memory speed on a hole.
pub fn is_all_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        let mut acc = 0u64;
        for word in block.chunks_exact(8) {
            if let Ok(word) = <[u8; 8]>::try_from(word) {
                acc |= u64::from_ne_bytes(word);
            }
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert_eq!(Chunker::default().chunk_size(), 512 * 1024);
        for ok in [4096, 8192, 512 * 1024, 16 << 20] {
            assert_eq!(Chunker::new(ok).map(|c| c.chunk_size()).ok(), Some(ok));
        }
        for bad in [0, 1, 2048, 4095, 5000, 3 << 20, 32 << 20, usize::MAX] {
            assert!(
                matches!(Chunker::new(bad), Err(Error::InvalidChunkSize { size }) if size == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn is_all_zero_finds_any_nonzero_byte() {
        for len in [0usize, 1, 7, 8, 63, 64, 65, 200, 4096] {
            let mut v = vec![0u8; len];
            assert!(is_all_zero(&v));
            for i in 0..len {
                v[i] = 0x80;
                assert!(!is_all_zero(&v), "len {len} pos {i}");
                v[i] = 0;
            }
        }
    }

    #[test]
    fn split_marks_holes_and_short_tail() {
        let c = Chunker::new(4096).unwrap_or_default();
        let mut data = vec![0u8; 4096 * 2 + 100];
        data[5000] = 1;
        let chunks: Vec<_> = c.split(&data).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].data, ChunkData::Hole { len: 4096 });
        assert_eq!(chunks[1].data, ChunkData::Data(&data[4096..8192]));
        assert_eq!(chunks[2].data, ChunkData::Hole { len: 100 });
        assert_eq!(
            chunks.iter().map(|c| c.offset).collect::<Vec<_>>(),
            [0, 4096, 8192]
        );
        assert_eq!(c.chunk_count(data.len() as u64), 3);
        assert_eq!(c.split(&[]).count(), 0);
    }

    #[test]
    fn reader_error_names_offset_and_keeps_kind() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cable cut"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let c = Chunker::new(4096).unwrap_or_default();
        let mut it = c.reader(Failing(4096 + 10));
        assert!(matches!(it.next(), Some(Ok(ref ch)) if ch.offset == 0));
        let err = match it.next() {
            Some(Err(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let text = format!("{err} / {:?}", std::error::Error::source(&err));
        assert!(text.contains("offset 4096"), "{text}");
        assert!(text.contains("cable cut"), "{text}");
        assert!(it.next().is_none());
    }
}
