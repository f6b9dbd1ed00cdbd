//! One layer's normalized entries and spooled contents: what reading
//! produces and applying consumes.

use std::fs::File;

use crate::error::LayerError;
use crate::tree::{FileData, Metadata};

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
    pub(crate) raw: Vec<u8>,
    pub(crate) comps: Vec<Vec<u8>>,
    pub(crate) op: Op,
    pub(crate) meta: Metadata,
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

pub(crate) fn entry_err(raw: &[u8], reason: impl Into<String>) -> LayerError {
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
