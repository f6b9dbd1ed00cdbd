//! The public chunk table: a presence bitmap plus the names of present chunks.
//!
//! Kept in the encoded form so decoding allocates no more than the input
//! size (a table of holes costs one bit per chunk in memory too), with a rank
//! index for constant-time lookup by chunk index.

use chunk_core::ChunkName;

/// Chunks per rank block (64 bitmap bytes).
const BLOCK: usize = 512;

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ChunkTable {
    count: usize,
    bitmap: Vec<u8>,
    names: Vec<ChunkName>,
    /// Present chunks before each block of `BLOCK` chunks.
    rank: Vec<u32>,
}

impl ChunkTable {
    pub(crate) fn from_options(entries: impl ExactSizeIterator<Item = Option<ChunkName>>) -> Self {
        let count = entries.len();
        let mut bitmap = vec![0u8; count.div_ceil(8)];
        let mut names = Vec::new();
        for (i, name) in entries.enumerate() {
            if let Some(name) = name {
                bitmap[i / 8] |= 1 << (i % 8);
                names.push(name);
            }
        }
        Self::from_parts(count, bitmap, names)
    }

    /// `bitmap` must have `count.div_ceil(8)` bytes and as many set bits as
    /// `names` has entries (the decoder checks both).
    pub(crate) fn from_parts(count: usize, bitmap: Vec<u8>, names: Vec<ChunkName>) -> Self {
        let mut rank = Vec::with_capacity(count.div_ceil(BLOCK));
        let mut seen = 0u32;
        for block in bitmap.chunks(BLOCK / 8) {
            rank.push(seen);
            seen += block.iter().map(|b| b.count_ones()).sum::<u32>();
        }
        Self {
            count,
            bitmap,
            names,
            rank,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn present(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn bitmap(&self) -> &[u8] {
        &self.bitmap
    }

    pub(crate) fn present_names(&self) -> &[ChunkName] {
        &self.names
    }

    fn is_present(&self, index: usize) -> bool {
        self.bitmap[index / 8] >> (index % 8) & 1 == 1
    }

    pub(crate) fn get(&self, index: usize) -> Option<ChunkName> {
        if index >= self.count || !self.is_present(index) {
            return None;
        }
        let block = index / BLOCK;
        let start = block * BLOCK / 8;
        let byte = index / 8;
        let before: u32 = self.bitmap[start..byte]
            .iter()
            .map(|b| b.count_ones())
            .sum::<u32>()
            + (self.bitmap[byte] & ((1u8 << (index % 8)) - 1)).count_ones();
        self.names
            .get((self.rank[block] + before) as usize)
            .copied()
    }

    pub(crate) fn iter(&self) -> Names<'_> {
        Names {
            table: self,
            index: 0,
            next_name: 0,
        }
    }
}

/// Iterator over the names of all chunk indexes, `None` for holes.
pub struct Names<'a> {
    table: &'a ChunkTable,
    index: usize,
    next_name: usize,
}

impl Iterator for Names<'_> {
    type Item = Option<ChunkName>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.table.count {
            return None;
        }
        let present = self.table.is_present(self.index);
        self.index += 1;
        if present {
            let name = self.table.names.get(self.next_name).copied();
            self.next_name += 1;
            Some(name)
        } else {
            Some(None)
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.table.count - self.index;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Names<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn lookup_and_iteration_agree(present in proptest::collection::vec(proptest::bool::ANY, 0..2000)) {
            let entries: Vec<Option<ChunkName>> = present
                .iter()
                .enumerate()
                .map(|(i, p)| p.then(|| {
                    let mut b = [0u8; 32];
                    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    ChunkName::from_bytes(b)
                }))
                .collect();
            let t = ChunkTable::from_options(entries.iter().copied());
            proptest::prop_assert_eq!(t.iter().collect::<Vec<_>>(), entries.clone());
            proptest::prop_assert_eq!(t.iter().len(), entries.len());
            for (i, e) in entries.iter().enumerate() {
                proptest::prop_assert_eq!(t.get(i), *e);
            }
            proptest::prop_assert_eq!(t.get(entries.len()), None);
        }
    }
}
