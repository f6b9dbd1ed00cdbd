//! A deterministic, dedup-friendly writer of read-only ext4 images.
//!
//! [`write_image`] serializes a [`Tree`] and the file contents in its
//! [`Spool`] as an ext4 filesystem with 4 KiB blocks, extents, no journal and
//! 256-byte inodes (nanosecond timestamps from 1901-12-13 to 2446-05-10;
//! times outside are clamped, and so are those from 2310-04-04 to
//! 2378-04-22, which e2fsck reads as corrupt). The
//! output depends only on the tree and the [`Ext4Options`]: inode numbers
//! follow a breadth-first walk from the root with entries in byte order (node
//! ids and their storage order do not matter; a [`HotList`] numbers its
//! paths first, see below), nothing comes from the clock
//! (superblock times are 0) and nothing is random. Features:
//! `ext_attr dir_index sparse_super2 filetype extent flex_bg sparse_super
//! large_file huge_file dir_nlink extra_isize`; no journal, no checksums (the
//! chunk store authenticates every byte), no `resize_inode`.
//!
//! # Layout
//!
//! | blocks | contents |
//! | --- | --- |
//! | first 512 KiB | superblock and group descriptors (`sparse_super2` with no backups: no other copy anywhere) |
//! | one region per layer, each on a 512 KiB boundary | the data of `tree.layers[i]`'s files, in list order, each file contiguous from a block boundary, holes not allocated |
//! | only with [`Ext4Options::hot`]: the hot region, after the last layer region, on a 512 KiB boundary | extent tree blocks of files whose split extents outgrow the inode, then copies of the listed file blocks and the listed directories' blocks, in order of first access |
//! | after the last region, on a 512 KiB boundary | bitmaps, inode tables, directory blocks (those not in the hot region), extent tree blocks, long symlinks, xattr blocks |
//!
//! A layer's region depends only on the layers up to it, so the 512 KiB
//! chunks of a base layer's data are byte-identical whatever sits on top.
//! Files no node references any more (deleted or replaced by an upper layer)
//! keep their place; [`DeletedData`] says whether their bytes are kept or
//! zeroed. Their blocks are free in the bitmaps either way. The image size is
//! a multiple of 512 KiB.
//!
//! # Profile-guided layout (hot region)
//!
//! A cold start reads a small part of an image, scattered over the layer
//! regions: a few blocks of many files, and many directories. Given a
//! [`HotList`] recorded on an earlier run (which blocks of which paths were
//! read, in order), the writer puts a **copy** of each listed block in a
//! contiguous hot region, in order of first access, and points the file's
//! extents at the copies (extents are split into cold and hot runs). Listed
//! directories are placed whole in the hot region instead of the metadata
//! region, and so are the extent tree blocks of files whose split extents
//! no longer fit in the inode (at the region's front). A start then fetches the hot region's few chunks instead of many
//! chunks each holding a few needed blocks.
//!
//! The list also orders the inode table: the root stays inode 2, then every
//! node the lookups of the listed paths read (the directories on the way,
//! parents before children, symlinks followed in the parent part, the
//! named node itself, even one the region skips) gets the next numbers from
//! 11 in order of first appearance ([`HotRegion::inodes`] of them; a hard
//! link is one inode, numbered once), then all other inodes in breadth-first
//! order. The inodes a start reads are then a few contiguous inode-table
//! blocks instead of blocks spread over the whole table (where the
//! kernel's inode readahead reads 32 blocks around each). Directory
//! entries, `..`, hashed directories, bitmaps and group counts follow; the
//! metadata blocks of the other inodes stay in inode order. An entry with
//! no blocks still numbers its path (a profile of inodes only read).
//!
//! The layer regions do not change at all: the cold position of a hot block
//! keeps its bytes (it is only free in the block bitmap and referenced by no
//! extent). So the chunks of a shared base layer are byte-identical whatever
//! profile an image was built with, and still deduplicate across images;
//! only the hot region and the metadata differ. The price is the hot region's
//! size (the copies are extra bytes, about the data a start reads). Entries
//! naming missing paths, symlinks or special files are skipped and counted
//! ([`HotRegion::entries_skipped`]); blocks past the end of a file, holes and
//! blocks listed before are ignored. Without a list, or with one that places
//! nothing (then inodes are not renumbered either), the image is byte for
//! byte the one without.
//!
//! Extended attributes go in the inode's spare 92 bytes when they fit, else
//! in one xattr block shared by all inodes with identical attributes.
//! Supported names: `user.*`, `trusted.*`, `security.*` and the POSIX ACLs
//! `system.posix_acl_access`/`system.posix_acl_default` (given in the
//! xattr interface's format, stored in ext4's); others are an error.
//! Directories over one block are hashed (htree, half-MD4 with
//! [`Ext4Options::hash_seed`]), so lookups in huge directories stay fast.
//!
//! Hard links share one inode with the right link count; a directory with
//! more than 65,000 subdirectories gets link count 1 (`dir_nlink`). Symlinks
//! under 60 bytes live in the inode, longer ones (up to 4095) in a block;
//! device numbers use the kernel's old or new encoding.
//!
//! There is no `lost+found`: it is not part of the image. `e2fsck -fn` does
//! not complain about its absence; a repairing run (`-p`, `-y`) would create
//! it, which a read-only image never sees.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::io::Cursor;
//! use flattener::ext4::{write_image, Ext4Options};
//! use flattener::tree::{DataExtent, FileData, FileId, Metadata, Node, NodeKind, Spool, Tree};
//!
//! struct Mem(Vec<u8>);
//! impl Spool for Mem {
//!     fn read_at(&self, _layer: u32, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
//!         let start = offset as usize;
//!         buf.copy_from_slice(&self.0[start..start + buf.len()]);
//!         Ok(())
//!     }
//! }
//!
//! let mut tree = Tree::new(Metadata { mode: 0o755, ..Metadata::default() });
//! tree.files.push(FileData {
//!     layer: 0,
//!     size: 6,
//!     extents: vec![DataExtent { file_offset: 0, len: 6, spool_offset: 0 }],
//! });
//! tree.layers.push(vec![FileId(0)]);
//! let hello = tree.push_node(Node {
//!     meta: Metadata { mode: 0o644, ..Metadata::default() },
//!     kind: NodeKind::Regular { file: FileId(0) },
//! });
//! if let NodeKind::Directory { entries } = &mut tree.node_mut(Tree::ROOT).kind {
//!     entries.insert(b"hello.txt".to_vec(), hello);
//! }
//!
//! let mut image = Cursor::new(Vec::new());
//! let summary = write_image(&tree, &Mem(b"hello\n".to_vec()), &Ext4Options::default(), &mut image)?;
//! assert_eq!(summary.size_bytes, image.get_ref().len() as u64);
//! assert_eq!(summary.size_bytes % (512 * 1024), 0);
//! assert_eq!(summary.data_regions[0].start, 512 * 1024);
//! assert_eq!(&image.get_ref()[512 * 1024..512 * 1024 + 6], b"hello\n");
//! # Ok::<(), flattener::ext4::WriteError>(())
//! ```

mod error;
mod extents;
mod format;
mod hot;
mod inodes;
mod plan;
mod write;

use std::io::{Seek, Write};

pub use error::WriteError;
pub use hot::{HotEntry, HotList, HotRegion};

use crate::tree::{Spool, Tree};

/// What happens to the bytes of files that no node references any more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeletedData {
    /// Keep their place but write zeros (all-zero chunks cost nothing).
    #[default]
    Zero,
    /// Keep their place and their bytes (unreachable from the filesystem,
    /// but the layer's chunks stay identical to those of images where the
    /// file is alive).
    Keep,
}

/// Options of [`write_image`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ext4Options {
    /// Filesystem UUID (derive it from the content for determinism).
    pub uuid: [u8; 16],
    /// Directory hash seed (derive it from the content for determinism).
    pub hash_seed: [u8; 16],
    /// Volume label, at most 16 bytes.
    pub label: Vec<u8>,
    /// Treatment of unreferenced file data.
    pub deleted_data: DeletedData,
    /// Profile-guided placement: copies of these blocks go to a hot region
    /// (see the module docs). `None`: no hot region.
    pub hot: Option<HotList>,
}

impl Ext4Options {
    /// Options with this UUID and hash seed, no label, deleted data zeroed.
    pub fn new(uuid: [u8; 16], hash_seed: [u8; 16]) -> Self {
        Self {
            uuid,
            hash_seed,
            ..Self::default()
        }
    }
}

/// Where one layer's data landed in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DataRegion {
    /// The layer index.
    pub layer: u32,
    /// Byte offset of the region (a multiple of 512 KiB).
    pub start: u64,
    /// Length in bytes up to the end of the layer's last data block.
    pub len: u64,
}

/// What [`write_image`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageSummary {
    /// Image size in bytes (a multiple of 512 KiB).
    pub size_bytes: u64,
    /// Filesystem blocks (4 KiB).
    pub blocks: u64,
    /// Inodes in use, the reserved ones (1 to 10) included.
    pub inodes: u64,
    /// Per layer, bottom first, its data region.
    pub data_regions: Vec<DataRegion>,
    /// Byte offset where metadata starts (after the last data region and
    /// the hot region).
    pub metadata_start: u64,
    /// The hot region, when [`Ext4Options::hot`] was given.
    pub hot_region: Option<HotRegion>,
}

/// Writes `tree` as an ext4 image to `out`, reading file contents from
/// `spool`.
///
/// The image is written front to back from `out`'s current position, every
/// byte of it (zeros included), so `out` need not be empty. Only metadata is
/// held in memory; file data passes through a 1 MiB buffer.
///
/// # Errors
///
/// [`WriteError`] when the tree breaks its contract, holds something ext4
/// cannot represent, the image would be too large, or reading the spool or
/// writing `out` fails. Nothing is validated lazily: tree errors are found
/// before the first byte is written.
pub fn write_image<W: Write + Seek>(
    tree: &Tree,
    spool: &dyn Spool,
    opts: &Ext4Options,
    out: W,
) -> Result<ImageSummary, WriteError> {
    let plan = plan::Plan::new(tree, opts)?;
    write::write(&plan, spool, opts, out)?;
    Ok(ImageSummary {
        size_bytes: plan.geo.blocks_count * format::BLOCK,
        blocks: plan.geo.blocks_count,
        inodes: u64::from(format::FIRST_INO) - 1 + plan.inodes.len() as u64 - 1,
        data_regions: plan.regions.clone(),
        metadata_start: plan.meta_start * format::BLOCK,
        hot_region: plan.hot.as_ref().map(|h| h.summary),
    })
}
