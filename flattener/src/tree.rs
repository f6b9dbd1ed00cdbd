//! The flattened filesystem tree: the contract between layer application
//! (which builds it) and the ext4 writer (which serializes it).
//!
//! Only metadata lives here. File contents stay in a per-layer spool on disk
//! and are described by [`FileData`] extents, so memory grows with the
//! number of entries, never with the image size.

use std::collections::BTreeMap;
use std::io;

/// Index of a node in [`Tree::nodes`]. Several directory entries may point at
/// one node: that is a hard-link group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// Index of file contents in [`Tree::files`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u32);

/// Seconds and nanoseconds since the Unix epoch; `sec` may be negative
/// (before 1970) or beyond 2038.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

/// What every node has, whatever its type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`);
    /// the file type comes from [`NodeKind`].
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time; the writer uses it for atime, ctime and crtime too,
    /// so the output never depends on when it was made.
    pub mtime: Timestamp,
    /// Extended attributes, full names such as `security.capability` or
    /// `user.foo`, sorted (the map keeps the output deterministic).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The type of a node and what only that type has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory; entry names are single path components (no `/`, not `.`
    /// or `..`, at most 255 bytes, any bytes otherwise).
    Directory {
        /// Children by name, sorted bytewise.
        entries: BTreeMap<Vec<u8>, NodeId>,
    },
    /// A regular file whose contents are [`Tree::files`]`[file]`.
    Regular {
        /// The contents.
        file: FileId,
    },
    /// A symbolic link, never followed.
    Symlink {
        /// The raw target bytes.
        target: Vec<u8>,
    },
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket (tar cannot carry one, but the tree can).
    Socket,
}

/// One node: metadata plus type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Mode bits, owner, time, xattrs.
    pub meta: Metadata,
    /// Type and type-specific data.
    pub kind: NodeKind,
}

/// A run of a file's bytes that is present in the spool. Bytes of the file
/// not covered by any extent are holes (read as zeros, no blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataExtent {
    /// Offset of the run inside the file.
    pub file_offset: u64,
    /// Length of the run in bytes (> 0).
    pub len: u64,
    /// Where the run starts in the spool of the file's layer.
    pub spool_offset: u64,
}

/// The contents of one regular file, as introduced by one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileData {
    /// Index of the layer (0 = bottom) whose spool holds the bytes.
    pub layer: u32,
    /// Apparent size in bytes.
    pub size: u64,
    /// Present runs, sorted by `file_offset`, not overlapping, all within `size`.
    pub extents: Vec<DataExtent>,
}

/// Random access to the spooled file contents of every layer.
pub trait Spool: Sync {
    /// Fills `buf` with the bytes at `offset` of `layer`'s spool.
    fn read_at(&self, layer: u32, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A whole flattened filesystem.
///
/// `layers[i]` lists the files layer `i` introduced, in the order the writer
/// places their data. The order and the set depend only on that layer's own
/// content, so a layer's data region is the same whatever layers sit above
/// it. Files that an upper layer later removed or replaced stay in the list
/// but no node references them: the writer keeps their place (see the
/// crate docs for what it stores there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// All nodes; `nodes[0]` is the root directory.
    pub nodes: Vec<Node>,
    /// All file contents ever introduced.
    pub files: Vec<FileData>,
    /// Per layer, bottom first, the files it introduced in placement order.
    pub layers: Vec<Vec<FileId>>,
}

impl Tree {
    /// The root directory's id.
    pub const ROOT: NodeId = NodeId(0);

    /// A tree with only an empty root directory.
    pub fn new(root: Metadata) -> Self {
        Self {
            nodes: vec![Node {
                meta: root,
                kind: NodeKind::Directory {
                    entries: BTreeMap::new(),
                },
            }],
            files: Vec::new(),
            layers: Vec::new(),
        }
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    /// The node with this id, for changing.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0 as usize]
    }

    /// Adds a node (not yet linked into any directory) and returns its id.
    pub fn push_node(&mut self, node: Node) -> NodeId {
        let id = NodeId(u32::try_from(self.nodes.len()).expect("fewer than 2^32 nodes"));
        self.nodes.push(node);
        id
    }

    /// The contents with this id.
    pub fn file(&self, id: FileId) -> &FileData {
        &self.files[id.0 as usize]
    }
}
