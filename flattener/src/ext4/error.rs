//! Errors of the ext4 writer.

use std::io;

use crate::tree::{FileId, NodeId};

/// Why [`write_image`](super::write_image) failed.
///
/// Variants name the offending path (lossily decoded, as seen from the root),
/// node, file or offset so a caller can report what was wrong; I/O errors keep
/// their source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The tree breaks the contract documented in [`crate::tree`] (a dangling
    /// node id, a directory linked twice, a bad entry name, ...).
    #[error("invalid tree at {path:?}: {reason}")]
    InvalidTree {
        /// Path of the entry (or of the directory holding it).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A file's data description is inconsistent (unsorted or overlapping
    /// extents, extents beyond the size, listed in the wrong layer, ...).
    #[error("invalid data of file {file:?} (layer {layer}): {reason}")]
    InvalidFile {
        /// The file.
        file: FileId,
        /// The layer it claims to belong to.
        layer: u32,
        /// What is wrong.
        reason: String,
    },
    /// Something the tree holds cannot be represented in ext4 (a symlink
    /// target over 4095 bytes, a device number beyond 12/20 bits, too many
    /// hard links, an unsupported xattr namespace, xattrs over one block...).
    #[error("cannot represent {path:?} in ext4: {reason}")]
    Unrepresentable {
        /// Path of the node.
        path: String,
        /// What does not fit.
        reason: String,
    },
    /// The options are invalid (e.g. a label over 16 bytes).
    #[error("invalid ext4 options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
    /// The image would exceed what this writer supports (2^32 blocks of
    /// 4 KiB, 2^32 inodes, group descriptors beyond the first 512 KiB).
    #[error("image too large: {reason}")]
    TooLarge {
        /// Which limit was hit.
        reason: String,
    },
    /// Reading file contents from the spool failed.
    #[error("reading {len} bytes at offset {offset} of layer {layer}'s spool (node {node:?})")]
    Spool {
        /// Layer whose spool was read.
        layer: u32,
        /// Offset in that spool.
        offset: u64,
        /// Number of bytes asked for.
        len: usize,
        /// The node being written, if the file is still referenced.
        node: Option<NodeId>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing the image failed.
    #[error("writing the image at byte offset {offset}")]
    Write {
        /// Image offset of the failed write.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A bug in the writer: its own layout plan and its output disagree.
    #[error("internal ext4 writer error: {reason}")]
    Internal {
        /// What disagreed.
        reason: String,
    },
}
