//! Extent arithmetic: which logical blocks of a file hold data, how they
//! map to physical blocks (with hot-region copies), and how many extent tree
//! blocks a list of extents needs.

use super::format::{BLOCK, EXTENTS_IN_INODE, EXTENTS_PER_BLOCK, MAX_EXTENT_LEN};
use crate::tree::FileData;

/// One ext4 extent: (logical block, length, physical block).
pub(crate) type Extent = (u32, u16, u64);

/// Maximal runs of logical blocks that hold any present byte of `file`.
pub(crate) fn block_runs(file: &FileData) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut it = file.extents.iter().peekable();
    std::iter::from_fn(move || {
        let first = it.next()?;
        let start = first.file_offset / BLOCK;
        let mut end = (first.file_offset + first.len).div_ceil(BLOCK);
        while let Some(next) = it.peek() {
            if next.file_offset / BLOCK > end {
                break;
            }
            end = end.max((next.file_offset + next.len).div_ceil(BLOCK));
            it.next();
        }
        Some((start, end - start))
    })
}

/// The pieces (logical block, length, physical block, hot) of a file whose
/// allocated blocks are at `phys` onwards in its layer region, except the
/// `hot` runs (logical block, count, physical block; sorted, inside the
/// allocated blocks), which are at their hot-region copies. Pieces are in
/// logical order and not merged.
pub(crate) fn file_pieces(
    file: &FileData,
    phys: u64,
    hot: &[(u64, u64, u64)],
) -> Vec<(u64, u64, u64, bool)> {
    let mut out = Vec::new();
    let mut cold = phys;
    let mut hi = 0usize;
    for (lblk, count) in block_runs(file) {
        let end = lblk + count;
        let mut l = lblk;
        while l < end {
            while hi < hot.len() && hot[hi].0 + hot[hi].1 <= l {
                hi += 1;
            }
            match hot.get(hi) {
                Some(&(hl, hc, hp)) if hl <= l => {
                    let stop = (hl + hc).min(end);
                    out.push((l, stop - l, hp + (l - hl), true));
                    l = stop;
                }
                next => {
                    let stop = next.map_or(end, |h| h.0.min(end));
                    out.push((l, stop - l, cold + (l - lblk), false));
                    l = stop;
                }
            }
        }
        cold += count;
    }
    out
}

/// The ext4 extents (logical block, length, physical block) of a file placed
/// at `phys`, with its `hot` runs (see [`file_pieces`]) at their copies.
///
/// Cold and hot pieces never merge, so the number of extents does not
/// depend on where the hot region starts.
pub(crate) fn file_extents(file: &FileData, phys: u64, hot: &[(u64, u64, u64)]) -> Vec<Extent> {
    let mut merged: Vec<(u64, u64, u64, bool)> = Vec::new();
    for (l, n, p, h) in file_pieces(file, phys, hot) {
        match merged.last_mut() {
            Some(last) if last.0 + last.1 == l && last.2 + last.1 == p && last.3 == h => {
                last.1 += n
            }
            _ => merged.push((l, n, p, h)),
        }
    }
    let mut out = Vec::new();
    for (lblk, count, p, _) in merged {
        let mut done = 0;
        while done < count {
            let len = (count - done).min(MAX_EXTENT_LEN);
            out.push(((lblk + done) as u32, len as u16, p + done));
            done += len;
        }
    }
    out
}

/// Extents of `blocks` contiguous blocks at `phys` (directories).
pub(crate) fn contiguous_extents(blocks: u64, phys: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut done = 0;
    while done < blocks {
        let len = (blocks - done).min(MAX_EXTENT_LEN);
        out.push((done as u32, len as u16, phys + done));
        done += len;
    }
    out
}

/// Number of extent tree blocks (outside the inode) for `n` extents.
pub(crate) fn tree_block_count(n: u64) -> u64 {
    if n <= EXTENTS_IN_INODE as u64 {
        return 0;
    }
    let mut total = 0;
    let mut level = n;
    while level > EXTENTS_IN_INODE as u64 {
        level = level.div_ceil(EXTENTS_PER_BLOCK as u64);
        total += level;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::DataExtent;

    fn file(size: u64, ext: &[(u64, u64)]) -> FileData {
        FileData {
            layer: 0,
            size,
            extents: ext
                .iter()
                .map(|&(o, l)| DataExtent {
                    file_offset: o,
                    len: l,
                    spool_offset: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn runs_merge_extents_sharing_or_touching_blocks() {
        let f = file(
            40000,
            &[(0, 10), (100, 10), (4096, 1), (20000, 5), (30000, 5000)],
        );
        assert_eq!(
            block_runs(&f).collect::<Vec<_>>(),
            vec![(0, 2), (4, 1), (7, 2)]
        );
        assert_eq!(block_runs(&file(0, &[])).count(), 0);
    }

    #[test]
    fn hot_runs_split_extents_and_merge_when_contiguous() {
        let f = file(7 * 4096, &[(0, 3 * 4096), (5 * 4096, 2 * 4096)]);
        assert_eq!(file_extents(&f, 100, &[]), vec![(0, 3, 100), (5, 2, 103)]);
        assert_eq!(
            file_extents(&f, 100, &[(1, 1, 1000), (5, 2, 1001)]),
            vec![(0, 1, 100), (1, 1, 1000), (2, 1, 102), (5, 2, 1001)]
        );
        let pieces = file_pieces(&f, 100, &[(1, 1, 1000), (5, 2, 1001)]);
        let cold: Vec<_> = pieces.iter().filter(|p| !p.3).map(|p| (p.2, p.1)).collect();
        assert_eq!(cold, vec![(100, 1), (102, 1)]);
        // Hot runs placed back to back make one extent.
        let g = file(4 * 4096, &[(0, 4 * 4096)]);
        assert_eq!(
            file_extents(&g, 100, &[(0, 2, 1000), (2, 2, 1002)]),
            vec![(0, 4, 1000)]
        );
        // Long cold remainders still respect the extent length limit.
        let h = file(40_000 * 4096, &[(0, 40_000 * 4096)]);
        assert_eq!(
            file_extents(&h, 100, &[(0, 1, 9000)]),
            vec![(0, 1, 9000), (1, 32768, 101), (32769, 7231, 101 + 32768)]
        );
        assert_eq!(
            file_extents(&h, 100, &[]),
            vec![(0, 32768, 100), (32768, 7232, 100 + 32768)]
        );
    }

    #[test]
    fn tree_blocks_grow_by_levels() {
        assert_eq!(tree_block_count(4), 0);
        assert_eq!(tree_block_count(5), 1);
        assert_eq!(tree_block_count(340 * 4), 4);
        assert_eq!(tree_block_count(340 * 4 + 1), 5 + 1);
    }
}
