//! Layout planning: inode numbers, data placement, metadata placement and
//! group geometry, all computed from the tree before a byte is written.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use super::error::WriteError;
use super::extents::{
    Extent, block_runs, contiguous_extents, file_extents, file_pieces, tree_block_count,
};
use super::format::*;
use super::hot::{self, HotPlan};
use super::inodes::{Body, FilePlace, InodePlan, XattrPlace, index_of_ino, ino_of_index};
use super::{DataRegion, Ext4Options};
use crate::tree::{FileData, FileId, NodeId, NodeKind, Tree};

/// Group geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) groups: u64,
    pub(crate) blocks_per_group: u64,
    pub(crate) inodes_per_group: u64,
    /// Inode-table blocks per group.
    pub(crate) itable_blocks: u64,
    pub(crate) blocks_count: u64,
    pub(crate) gdt_blocks: u64,
}

pub(crate) struct Plan<'t> {
    pub(crate) tree: &'t Tree,
    /// Inode plans; index `i` has inode number [`ino_of_index`]`(i)`.
    pub(crate) inodes: Vec<InodePlan>,
    /// Inode number per node id (0: not reachable).
    pub(crate) ino_of: Vec<u32>,
    pub(crate) files: Vec<FilePlace>,
    pub(crate) regions: Vec<DataRegion>,
    /// Distinct xattr blocks: (encoded block without refcount, refcount).
    pub(crate) xattr_blocks: Vec<(Vec<u8>, u32)>,
    pub(crate) geo: Geometry,
    /// First metadata block (512 KiB aligned, after the last data region).
    pub(crate) meta_start: u64,
    /// First block after the bitmaps and inode tables.
    pub(crate) meta_base: u64,
    /// One past the last metadata block.
    pub(crate) meta_end: u64,
    /// Relative start of the xattr blocks.
    pub(crate) xattr_rel: u64,
    /// The hot region, when a hot list was given.
    pub(crate) hot: Option<HotPlan>,
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    if dir != b"/" {
        p.extend_from_slice(dir);
    }
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn validate_file(id: FileId, f: &FileData) -> Result<(), WriteError> {
    let bad = |reason: String| WriteError::InvalidFile {
        file: id,
        layer: f.layer,
        reason,
    };
    let max_size = (u64::from(u32::MAX)) * BLOCK;
    if f.size > max_size {
        return Err(bad(format!(
            "size {} exceeds ext4's limit of {max_size} bytes",
            f.size
        )));
    }
    let mut prev_end = 0u64;
    for (i, e) in f.extents.iter().enumerate() {
        let end = e.file_offset.checked_add(e.len);
        match end {
            Some(end) if e.len > 0 && end <= f.size && (i == 0 || e.file_offset >= prev_end) => {
                e.spool_offset
                    .checked_add(e.len)
                    .ok_or_else(|| bad(format!("extent {i} spool range overflows")))?;
                prev_end = end;
            }
            _ => {
                return Err(bad(format!(
                    "extent {i} (offset {}, len {}) is empty, overlaps its predecessor, is unsorted or exceeds size {}",
                    e.file_offset, e.len, f.size
                )));
            }
        }
    }
    Ok(())
}

/// Sorted xattr entries of a node, validated.
pub(crate) fn xattr_entries<'a>(
    xattrs: &'a BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<Vec<XattrEntry<'a>>, String> {
    let mut out = Vec::with_capacity(xattrs.len());
    for (name, value) in xattrs {
        // The kernel's limit (XATTR_NAME_MAX) is on the full name: a longer
        // one would be listed but could never be read.
        if name.len() > 255 {
            return Err(format!(
                "xattr name {:?} is {} bytes; Linux allows 255",
                lossy(name),
                name.len()
            ));
        }
        if [&b"user."[..], b"trusted.", b"security."].contains(&name.as_slice()) {
            return Err(format!("xattr name {:?} has an empty suffix", lossy(name)));
        }
        let (index, suffix) = xattr_index(name).ok_or_else(|| {
            format!(
                "xattr {:?}: only user.*, trusted.*, security.* and POSIX ACL names are supported",
                lossy(name)
            )
        })?;
        let value = if index == XATTR_INDEX_ACL_ACCESS || index == XATTR_INDEX_ACL_DEFAULT {
            Cow::Owned(
                acl_to_disk(value)
                    .ok_or_else(|| format!("xattr {:?} is not a valid POSIX ACL", lossy(name)))?,
            )
        } else {
            Cow::Borrowed(value.as_slice())
        };
        out.push((index, suffix, value));
    }
    // The kernel searches block entries assuming this order.
    out.sort_by(|a, b| (a.0, a.1.len(), a.1).cmp(&(b.0, b.1.len(), b.1)));
    Ok(out)
}

/// Encodes an xattr block (refcount left 0).
fn xattr_block(entries: &[XattrEntry<'_>]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    put32(&mut b, 0, XATTR_MAGIC);
    put32(&mut b, 8, 1); // h_blocks
    let hashes = encode_xattrs(&mut b[XATTR_BLOCK_HEADER..], XATTR_BLOCK_HEADER, entries);
    let mut hash: u32 = 0;
    for h in hashes {
        hash = (hash << 16) ^ (hash >> 16) ^ h;
    }
    put32(&mut b, 12, hash);
    b
}

impl<'t> Plan<'t> {
    pub(crate) fn new(tree: &'t Tree, opts: &Ext4Options) -> Result<Self, WriteError> {
        if opts.label.len() > 16 {
            return Err(WriteError::InvalidOptions {
                reason: format!("label is {} bytes, at most 16 allowed", opts.label.len()),
            });
        }
        let n_nodes = tree.nodes.len();
        if n_nodes == 0 {
            return Err(WriteError::InvalidTree {
                path: "/".into(),
                reason: "no root node".into(),
            });
        }
        let mut ino_of = vec![0u32; n_nodes];
        let mut files = vec![FilePlace::default(); tree.files.len()];
        let mut inodes: Vec<InodePlan> = Vec::new();
        let mut queue: VecDeque<(NodeId, Vec<u8>)> = VecDeque::new();

        let root = tree.node(Tree::ROOT);
        if !matches!(root.kind, NodeKind::Directory { .. }) {
            return Err(WriteError::InvalidTree {
                path: "/".into(),
                reason: "root is not a directory".into(),
            });
        }
        ino_of[0] = ROOT_INO;
        inodes.push(Self::discover(
            tree,
            Tree::ROOT,
            0,
            b"/",
            &mut files,
            &opts.hash_seed,
        )?);
        queue.push_back((Tree::ROOT, b"/".to_vec()));

        while let Some((dir, path)) = queue.pop_front() {
            let dir_ino = ino_of[dir.0 as usize];
            let dir_idx = index_of_ino(dir_ino).expect("planned directory");
            let NodeKind::Directory { entries } = &tree.node(dir).kind else {
                unreachable!("queued non-directory")
            };
            for (name, &child) in entries {
                let bad = |reason: &str| WriteError::InvalidTree {
                    path: lossy(&child_path(&path, name)),
                    reason: reason.into(),
                };
                if name.is_empty() || name.len() > 255 {
                    return Err(bad("entry name must be 1 to 255 bytes"));
                }
                if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
                    return Err(bad("entry name contains '/' or NUL, or is '.' or '..'"));
                }
                let Some(slot) = ino_of.get(child.0 as usize).copied() else {
                    return Err(bad(&format!("entry points at missing node {}", child.0)));
                };
                let is_dir = matches!(tree.node(child).kind, NodeKind::Directory { .. });
                if slot != 0 {
                    if is_dir {
                        return Err(bad("directory linked twice (hard link or cycle)"));
                    }
                    let idx = index_of_ino(slot).expect("planned inode");
                    inodes[idx].links += 1;
                    if inodes[idx].links > LINK_MAX {
                        return Err(WriteError::Unrepresentable {
                            path: lossy(&child_path(&path, name)),
                            reason: format!("more than {LINK_MAX} hard links"),
                        });
                    }
                    continue;
                }
                let index = inodes.len();
                if index as u64 + u64::from(FIRST_INO) > u64::from(u32::MAX) {
                    return Err(WriteError::TooLarge {
                        reason: "more than 2^32 inodes".into(),
                    });
                }
                let ino = ino_of_index(index);
                ino_of[child.0 as usize] = ino;
                let cpath = child_path(&path, name);
                let mut plan = Self::discover(
                    tree,
                    child,
                    index as u32,
                    &cpath,
                    &mut files,
                    &opts.hash_seed,
                )?;
                if is_dir {
                    plan.parent = dir_ino;
                    inodes[dir_idx].links += 1;
                    queue.push_back((child, cpath));
                }
                inodes.push(plan);
            }
        }
        for p in &mut inodes {
            // dir_nlink: a directory with too many subdirectories counts 1.
            if matches!(p.body, Body::Dir { .. }) && p.links > LINK_MAX {
                p.links = 1;
            }
        }

        // Data regions, layer by layer.
        let mut cursor = CHUNK_BLOCKS;
        let mut regions = Vec::with_capacity(tree.layers.len());
        for (layer, list) in tree.layers.iter().enumerate() {
            let layer = layer as u32;
            cursor = cursor.next_multiple_of(CHUNK_BLOCKS);
            let start = cursor;
            for &id in list {
                let Some(f) = tree.files.get(id.0 as usize) else {
                    return Err(WriteError::InvalidFile {
                        file: id,
                        layer,
                        reason: "no such file".into(),
                    });
                };
                if f.layer != layer {
                    return Err(WriteError::InvalidFile {
                        file: id,
                        layer,
                        reason: format!(
                            "listed in layer {layer} but its data is in layer {}",
                            f.layer
                        ),
                    });
                }
                let place = &mut files[id.0 as usize];
                if place.placed {
                    return Err(WriteError::InvalidFile {
                        file: id,
                        layer,
                        reason: "listed twice".into(),
                    });
                }
                validate_file(id, f)?;
                place.placed = true;
                place.phys = cursor;
                place.blocks = block_runs(f).map(|(_, n)| n).sum();
                cursor += place.blocks;
            }
            regions.push(DataRegion {
                layer,
                start: start * BLOCK,
                len: (cursor - start) * BLOCK,
            });
        }
        for (i, place) in files.iter().enumerate() {
            if place.owner.is_some() && !place.placed {
                return Err(WriteError::InvalidFile {
                    file: FileId(i as u32),
                    layer: tree.files[i].layer,
                    reason: "referenced by a node but listed in no layer".into(),
                });
            }
        }
        // The hot region, then metadata, each on a chunk boundary. With no
        // hot blocks the metadata starts where it would without a list.
        let data_end = cursor.next_multiple_of(CHUNK_BLOCKS);
        let mut hot = opts
            .hot
            .as_ref()
            .map(|list| hot::plan(tree, list, &ino_of, &mut inodes, &files, data_end));
        // Hot inodes first (only when the list places something: a list
        // that places nothing changes nothing).
        if let (Some(list), Some(hp)) = (&opts.hot, hot.as_mut())
            && hp.summary.blocks > 0
        {
            hp.summary.inodes = hot::renumber(tree, list, &mut ino_of, &mut inodes, &mut files, hp);
        }
        let meta_start = hot
            .as_ref()
            .map_or(data_end, |h| h.end().next_multiple_of(CHUNK_BLOCKS));

        // Metadata blocks that do not depend on the geometry, relative.
        let mut rel = 0u64;
        let mut xattr_dedup: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        let mut xattr_blocks: Vec<(Vec<u8>, u32)> = Vec::new();
        for p in &mut inodes {
            p.meta_rel = rel;
            rel += match p.body {
                Body::Dir {
                    blocks,
                    tree_blocks,
                    ..
                } => {
                    if p.hot_dir.is_some() {
                        tree_blocks
                    } else {
                        blocks + tree_blocks
                    }
                }
                Body::File { tree_blocks, .. } if p.hot_tree.is_none() => tree_blocks,
                Body::File { .. } => 0,
                Body::SlowSymlink => 1,
                Body::FastSymlink | Body::Special => 0,
            };
            if p.xattr == XattrPlace::Block(0) {
                let entries = xattr_entries(&tree.node(p.node).meta.xattrs).expect("validated");
                let block = xattr_block(&entries);
                let next = xattr_blocks.len() as u32;
                let idx = *xattr_dedup.entry(block).or_insert(next);
                if idx == next {
                    xattr_blocks.push((Vec::new(), 0));
                }
                xattr_blocks[idx as usize].1 += 1;
                p.xattr = XattrPlace::Block(idx);
            }
        }
        for (block, idx) in xattr_dedup {
            xattr_blocks[idx as usize].0 = block;
        }
        let xattr_rel = rel;
        rel += xattr_blocks.len() as u64;

        let used_inodes = u64::from(FIRST_INO) - 1 + inodes.len() as u64 - 1;
        let geo = geometry(meta_start, rel, used_inodes)?;
        let meta_base = meta_start + 2 * geo.groups + geo.groups * geo.itable_blocks;
        Ok(Plan {
            tree,
            inodes,
            ino_of,
            files,
            regions,
            xattr_blocks,
            geo,
            meta_start,
            meta_base,
            meta_end: meta_base + rel,
            xattr_rel,
            hot,
        })
    }

    /// Plans one newly reached node (links start at 1 for files, 2 for dirs).
    fn discover(
        tree: &Tree,
        id: NodeId,
        index: u32,
        path: &[u8],
        files: &mut [FilePlace],
        seed: &[u8; 16],
    ) -> Result<InodePlan, WriteError> {
        let node = tree.node(id);
        let unrep = |reason: String| WriteError::Unrepresentable {
            path: lossy(path),
            reason,
        };
        let (body, links) = match &node.kind {
            NodeKind::Directory { entries } => {
                let linear = dir_block_count(entries.keys().map(|k| k.len()));
                let (blocks, indexed) = if linear > 1 {
                    (Htree::new(entries, seed).map_err(unrep)?.blocks(), true)
                } else {
                    (linear, false)
                };
                let tree_blocks = tree_block_count(contiguous_extents(blocks, 0).len() as u64);
                (
                    Body::Dir {
                        blocks,
                        tree_blocks,
                        indexed,
                    },
                    2,
                )
            }
            NodeKind::Regular { file } => {
                let Some(place) = files.get_mut(file.0 as usize) else {
                    return Err(WriteError::InvalidTree {
                        path: lossy(path),
                        reason: format!("refers to missing file {}", file.0),
                    });
                };
                if place.owner.is_some() {
                    return Err(WriteError::InvalidTree {
                        path: lossy(path),
                        reason: format!(
                            "file {} is the contents of two nodes (use one node for hard links)",
                            file.0
                        ),
                    });
                }
                place.owner = Some(index);
                let f = tree.file(*file);
                validate_file(*file, f)?;
                let n: u64 = block_runs(f).map(|(_, c)| c.div_ceil(MAX_EXTENT_LEN)).sum();
                (
                    Body::File {
                        file: *file,
                        tree_blocks: tree_block_count(n),
                    },
                    1,
                )
            }
            NodeKind::Symlink { target } => {
                if target.is_empty() || target.contains(&0) {
                    return Err(unrep("symlink target is empty or contains NUL".into()));
                }
                if target.len() >= BLOCK as usize {
                    return Err(unrep(format!(
                        "symlink target of {} bytes (at most 4095)",
                        target.len()
                    )));
                }
                (
                    if target.len() < 60 {
                        Body::FastSymlink
                    } else {
                        Body::SlowSymlink
                    },
                    1,
                )
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                if encode_device(*major, *minor).is_none() {
                    return Err(unrep(format!(
                        "device {major}:{minor} exceeds 12-bit major / 20-bit minor"
                    )));
                }
                (Body::Special, 1)
            }
            NodeKind::Fifo | NodeKind::Socket => (Body::Special, 1),
        };
        let xattr = if node.meta.xattrs.is_empty() {
            XattrPlace::None
        } else {
            let entries = xattr_entries(&node.meta.xattrs).map_err(unrep)?;
            let space = xattr_space(&entries);
            if space <= IBODY_XATTR_SPACE {
                XattrPlace::Inline
            } else if space <= BLOCK as usize - XATTR_BLOCK_HEADER {
                XattrPlace::Block(0)
            } else {
                return Err(unrep(format!(
                    "xattrs need {space} bytes, more than one 4 KiB block"
                )));
            }
        };
        Ok(InodePlan {
            node: id,
            links,
            parent: ROOT_INO,
            body,
            xattr,
            meta_rel: 0,
            hot_dir: None,
            hot_tree: None,
        })
    }

    /// Physical block of the first metadata block of inode `index`.
    pub(crate) fn meta_block(&self, index: usize) -> u64 {
        self.meta_base + self.inodes[index].meta_rel
    }

    /// The hot runs of `file` (logical block, count, physical block).
    pub(crate) fn hot_runs(&self, file: FileId) -> &[(u64, u64, u64)] {
        self.hot.as_ref().map_or(&[], |h| h.runs_of(file))
    }

    /// The extents of `file` (placed and referenced).
    pub(crate) fn extents_of(&self, file: FileId) -> Vec<Extent> {
        file_extents(
            self.tree.file(file),
            self.files[file.0 as usize].phys,
            self.hot_runs(file),
        )
    }

    /// Physical block of the first directory block of directory inode `index`.
    pub(crate) fn dir_block(&self, index: usize) -> u64 {
        self.inodes[index]
            .hot_dir
            .unwrap_or_else(|| self.meta_block(index))
    }

    /// Physical block of xattr block `i`.
    pub(crate) fn xattr_block_no(&self, i: u32) -> u64 {
        self.meta_base + self.xattr_rel + u64::from(i)
    }

    /// Sorted, merged ranges of used blocks `[start, end)`.
    pub(crate) fn used_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = vec![(0, 1 + self.geo.gdt_blocks)];
        let mut push = |s: u64, e: u64| {
            if s == e {
                return;
            }
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        };
        for layer in &self.tree.layers {
            for id in layer {
                let p = &self.files[id.0 as usize];
                if p.owner.is_none() {
                    continue;
                }
                let hot = self.hot_runs(*id);
                if hot.is_empty() {
                    push(p.phys, p.phys + p.blocks);
                } else {
                    // The cold copies of hot blocks are free.
                    for (_, n, b, is_hot) in file_pieces(self.tree.file(*id), p.phys, hot) {
                        if !is_hot {
                            push(b, b + n);
                        }
                    }
                }
            }
        }
        if let Some(h) = &self.hot {
            push(h.start, h.end());
        }
        push(self.meta_start, self.meta_end);
        out
    }
}

/// A hashed directory: entries sorted by hash and cut into leaf blocks.
pub(crate) struct Htree<'a> {
    /// (hash, name, node), sorted by hash then name.
    pub(crate) entries: Vec<(u32, &'a [u8], NodeId)>,
    /// Per leaf block: its first entry and the hash its index entry carries
    /// (low bit set when a run of equal hashes continues from the previous leaf).
    pub(crate) leaves: Vec<(usize, u32)>,
    /// Interior index blocks (0: the root indexes the leaves directly).
    pub(crate) nodes: usize,
}

impl<'a> Htree<'a> {
    pub(crate) fn new(
        entries: &'a BTreeMap<Vec<u8>, NodeId>,
        seed: &[u8; 16],
    ) -> Result<Self, String> {
        let mut sorted: Vec<(u32, &[u8], NodeId)> = entries
            .iter()
            .map(|(n, &id)| (dx_hash(n, seed), n.as_slice(), id))
            .collect();
        sorted.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut leaves = Vec::new();
        let mut used = BLOCK as usize;
        for (i, &(hash, name, _)) in sorted.iter().enumerate() {
            let size = dirent_len(name.len());
            if used + size > BLOCK as usize {
                let continued = i > 0 && sorted[i - 1].0 == hash;
                leaves.push((i, hash | u32::from(continued)));
                used = 0;
            }
            used += size;
        }
        let nodes = if leaves.len() <= DX_ROOT_LIMIT {
            0
        } else {
            leaves.len().div_ceil(DX_NODE_LIMIT)
        };
        if nodes > DX_ROOT_LIMIT {
            return Err(format!(
                "directory of {} entries exceeds a two-level htree",
                entries.len()
            ));
        }
        Ok(Self {
            entries: sorted,
            leaves,
            nodes,
        })
    }

    /// Directory blocks: root, interior nodes, leaves.
    pub(crate) fn blocks(&self) -> u64 {
        (1 + self.nodes + self.leaves.len()) as u64
    }
}

/// Blocks a linear directory with names of these lengths needs ('.' and '..'
/// first).
pub(crate) fn dir_block_count(names: impl Iterator<Item = usize>) -> u64 {
    let mut blocks = 1u64;
    let mut used = 2 * dirent_len(2);
    for len in names {
        let size = dirent_len(len);
        if used + size > BLOCK as usize {
            blocks += 1;
            used = 0;
        }
        used += size;
    }
    blocks
}

/// Chooses groups, blocks and inodes per group for `meta_start` data blocks,
/// `meta_rel` geometry-independent metadata blocks and `used_inodes` inodes.
///
/// Normally groups hold 32768 blocks; when the inodes need more groups than
/// the blocks do, groups get smaller instead of the image bigger.
fn geometry(meta_start: u64, meta_rel: u64, used_inodes: u64) -> Result<Geometry, WriteError> {
    let too_large = |reason: String| WriteError::TooLarge { reason };
    let mut groups = used_inodes.div_ceil(BITS_PER_BLOCK).max(1);
    let mut extra = 0u64;
    for _ in 0..64 {
        let ipg = used_inodes
            .div_ceil(groups)
            .next_multiple_of(INODES_PER_BLOCK)
            .max(INODES_PER_BLOCK);
        let itable_blocks = ipg / INODES_PER_BLOCK;
        let used = meta_start + meta_rel + groups * (2 + itable_blocks) + extra;
        let blocks = used.next_multiple_of(CHUNK_BLOCKS);
        if blocks > u64::from(u32::MAX) {
            return Err(too_large(format!("{blocks} blocks exceed 2^32")));
        }
        let by_blocks = blocks.div_ceil(BITS_PER_BLOCK);
        if by_blocks > groups {
            groups = by_blocks;
            continue;
        }
        let bpg = if by_blocks == groups {
            BITS_PER_BLOCK
        } else {
            blocks
                .div_ceil(groups)
                .next_multiple_of(8)
                .max(itable_blocks + 8)
        };
        if bpg > BITS_PER_BLOCK {
            groups += 1;
            continue;
        }
        // Every group must hold at least one block. Grow what is used (not
        // the rounded block count) up to the bound: a step smaller than the
        // rounding would be absorbed by it and never converge.
        let lower = (groups - 1) * bpg + 1;
        if blocks < lower {
            extra += lower - used;
            continue;
        }
        let gdt_blocks = (groups * 32).div_ceil(BLOCK);
        if gdt_blocks >= CHUNK_BLOCKS {
            return Err(too_large(format!(
                "{groups} groups: descriptors exceed the first 512 KiB"
            )));
        }
        if groups * ipg > u64::from(u32::MAX) {
            return Err(too_large(format!("{} inodes exceed 2^32", groups * ipg)));
        }
        return Ok(Geometry {
            groups,
            blocks_per_group: bpg,
            inodes_per_group: ipg,
            itable_blocks,
            blocks_count: blocks,
            gdt_blocks,
        });
    }
    Err(WriteError::Internal {
        reason: "group geometry did not converge".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_consistent() {
        for (meta_start, rel, inodes) in [
            (128, 10, 11),
            (128, 0, 200_000),
            (300_000, 5000, 40),
            (128, 700, 1_000_000),
            (5_000_000, 0, 100),
        ] {
            let g = geometry(meta_start, rel, inodes).unwrap();
            assert_eq!(
                g.blocks_count.div_ceil(g.blocks_per_group),
                g.groups,
                "{g:?}"
            );
            assert!(g.groups * g.inodes_per_group >= inodes);
            assert!(g.inodes_per_group <= BITS_PER_BLOCK && g.blocks_per_group <= BITS_PER_BLOCK);
            assert!(g.blocks_count >= meta_start + rel + g.groups * (2 + g.itable_blocks));
            assert_eq!(g.blocks_count % CHUNK_BLOCKS, 0);
        }
    }

    fn check_geometry(meta_start: u64, rel: u64, inodes: u64) {
        let g = geometry(meta_start, rel, inodes).unwrap();
        assert_eq!(
            g.blocks_count.div_ceil(g.blocks_per_group),
            g.groups,
            "{g:?}"
        );
        assert!(g.groups * g.inodes_per_group >= inodes, "{g:?}");
        assert!(g.inodes_per_group <= BITS_PER_BLOCK && g.blocks_per_group <= BITS_PER_BLOCK);
        assert_eq!(g.inodes_per_group % INODES_PER_BLOCK, 0);
        assert_eq!(g.blocks_per_group % 8, 0);
        assert!(
            g.inodes_per_group <= INODES_PER_BLOCK * (g.blocks_per_group - 4),
            "{g:?}"
        );
        assert!(g.blocks_count >= meta_start + rel + g.groups * (2 + g.itable_blocks));
        assert_eq!(g.blocks_count % CHUNK_BLOCKS, 0);
        assert!(g.gdt_blocks < CHUNK_BLOCKS);
    }

    #[test]
    fn geometry_regressions() {
        // Found by geometry_holds_its_invariants.
        check_geometry(3915 * CHUNK_BLOCKS, 297_248, 19_936_225);
    }

    proptest::proptest! {
        #[test]
        fn geometry_holds_its_invariants(
            chunks in 1u64..200_000,
            rel in 0u64..2_000_000,
            inodes in 11u64..20_000_000,
        ) {
            check_geometry(chunks * CHUNK_BLOCKS, rel, inodes);
        }
    }
}
