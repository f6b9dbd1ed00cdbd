//! What the planner decides per inode and per file, and the mapping between
//! inode numbers and plan indices: shared by the planner and the hot region.

use super::format::{FIRST_INO, ROOT_INO};
use crate::tree::{FileId, NodeId};

/// Where a node's xattrs live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum XattrPlace {
    None,
    Inline,
    /// Index into the plan's `xattr_blocks`.
    Block(u32),
}

/// What an inode stores besides its fixed fields.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Body {
    /// `blocks` directory blocks then `tree_blocks` extent blocks; `indexed`
    /// directories are htrees (more than one block of entries).
    Dir {
        blocks: u64,
        tree_blocks: u64,
        indexed: bool,
    },
    /// Extent tree blocks of a regular file.
    File { file: FileId, tree_blocks: u64 },
    /// Target stored in `i_block`.
    FastSymlink,
    /// Target stored in one metadata block.
    SlowSymlink,
    /// Devices, FIFOs and sockets: nothing beyond the inode.
    Special,
}

#[derive(Debug)]
pub(crate) struct InodePlan {
    pub(crate) node: NodeId,
    pub(crate) links: u32,
    /// Parent directory inode number (directories only).
    pub(crate) parent: u32,
    pub(crate) body: Body,
    pub(crate) xattr: XattrPlace,
    /// First metadata block of this inode, relative to the plan's `meta_base`.
    pub(crate) meta_rel: u64,
    /// Directories in the hot region: the physical block of their first
    /// directory block (their extent tree blocks stay in the metadata).
    pub(crate) hot_dir: Option<u64>,
    /// Files with hot blocks and an extent tree: the physical block of
    /// their first extent tree block, in the hot region.
    pub(crate) hot_tree: Option<u64>,
}

/// Placement of one file's data.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FilePlace {
    /// First physical block (valid when `placed`).
    pub(crate) phys: u64,
    /// Number of allocated blocks (holes excluded).
    pub(crate) blocks: u64,
    pub(crate) placed: bool,
    /// The inode index referencing the file, if any.
    pub(crate) owner: Option<u32>,
}

/// Inode number of the inode planned at `index` (the root first).
pub(crate) fn ino_of_index(index: usize) -> u32 {
    if index == 0 {
        ROOT_INO
    } else {
        index as u32 + FIRST_INO - 1
    }
}

/// Index in the plan's `inodes` of inode number `ino`, if it is planned.
pub(crate) fn index_of_ino(ino: u32) -> Option<usize> {
    match ino {
        ROOT_INO => Some(0),
        i if i >= FIRST_INO => Some((i - FIRST_INO + 1) as usize),
        _ => None,
    }
}
