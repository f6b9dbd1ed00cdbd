//! The chunk table: what the worker needs of an opened manifest.

use chunk_core::ChunkRef;

use crate::error::{Error, Result};

/// What the worker needs of an opened manifest: sizes and one optional
/// [`ChunkRef`] per chunk (`None` = hole, all zeros, never stored).
#[derive(Debug, Clone)]
pub struct ChunkTable {
    /// Image size in bytes.
    pub image_size: u64,
    /// Chunk size in bytes (the last chunk may be shorter).
    pub chunk_size: u32,
    /// One entry per chunk.
    pub chunks: Vec<Option<ChunkRef>>,
}

impl ChunkTable {
    /// Checks that sizes and the number of chunks agree.
    pub fn validate(&self) -> Result<()> {
        if self.chunk_size == 0 {
            return Err(Error::InvalidTable {
                reason: "chunk size is 0".into(),
            });
        }
        let want = self.image_size.div_ceil(u64::from(self.chunk_size));
        if self.chunks.len() as u64 != want {
            return Err(Error::InvalidTable {
                reason: format!(
                    "{} chunk entries for an image of {} bytes in chunks of {} (want {want})",
                    self.chunks.len(),
                    self.image_size,
                    self.chunk_size
                ),
            });
        }
        Ok(())
    }

    /// Plaintext length of chunk `index`.
    pub(super) fn chunk_len(&self, index: u64) -> usize {
        let start = index * u64::from(self.chunk_size);
        (self.image_size - start).min(u64::from(self.chunk_size)) as usize
    }
}

impl From<manifest::Manifest> for ChunkTable {
    fn from(m: manifest::Manifest) -> Self {
        Self {
            image_size: m.image_size,
            chunk_size: m.chunk_size,
            chunks: m.chunks,
        }
    }
}
