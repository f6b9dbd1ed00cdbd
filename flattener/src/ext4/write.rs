//! Streams a planned image to the output, front to back.

use std::io::{BufWriter, Write};

use super::error::WriteError;
use super::extents::{Extent, block_runs, contiguous_extents};
use super::format::*;
use super::hot::HotItem;
use super::inodes::{Body, XattrPlace, index_of_ino, ino_of_index};
use super::plan::{Htree, Plan, dir_block_count, xattr_entries};
use super::{DeletedData, Ext4Options};
use crate::tree::{FileData, NodeId, NodeKind, Spool};

/// Size of the copy buffer and of the output buffer.
const IO_BUF: usize = 1 << 20;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Sequential output that tracks its position.
struct Out<W: Write> {
    w: BufWriter<W>,
    pos: u64,
}

impl<W: Write> Out<W> {
    fn write(&mut self, data: &[u8]) -> Result<(), WriteError> {
        self.w.write_all(data).map_err(|source| WriteError::Write {
            offset: self.pos,
            source,
        })?;
        self.pos += data.len() as u64;
        Ok(())
    }

    /// Writes zeros up to byte `to`.
    fn pad_to(&mut self, to: u64) -> Result<(), WriteError> {
        if to < self.pos {
            return Err(WriteError::Internal {
                reason: format!(
                    "layout goes backwards: at byte {} asked to write at {to}",
                    self.pos
                ),
            });
        }
        while self.pos < to {
            let n = (to - self.pos).min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
        }
        Ok(())
    }

    /// Positions at block `blk`, which must not be behind.
    fn seek_block(&mut self, blk: u64) -> Result<(), WriteError> {
        self.pad_to(blk * BLOCK)
    }
}

/// Sets bits `[from, to)` of a bitmap.
fn set_bits(b: &mut [u8], mut from: u64, to: u64) {
    while from < to && !from.is_multiple_of(8) {
        b[(from / 8) as usize] |= 1 << (from % 8);
        from += 1;
    }
    while from + 8 <= to {
        b[(from / 8) as usize] = 0xff;
        from += 8;
    }
    while from < to {
        b[(from / 8) as usize] |= 1 << (from % 8);
        from += 1;
    }
}

/// Builds an extent tree: the 60-byte root for `i_block` and the tree
/// blocks, which occupy consecutive blocks from `base` (leaves first).
pub(crate) fn build_extent_tree(ext: &[Extent], base: u64) -> ([u8; 60], Vec<u8>) {
    let mut root = [0u8; 60];
    if ext.len() <= EXTENTS_IN_INODE {
        extent_header(&mut root, ext.len(), EXTENTS_IN_INODE, 0);
        for (i, &(l, n, p)) in ext.iter().enumerate() {
            extent_leaf(&mut root[12 + 12 * i..], l, n, p);
        }
        return (root, Vec::new());
    }
    let mut blocks = Vec::new();
    let mut next = base;
    let mut nodes: Vec<(u32, u64)> = Vec::new();
    for chunk in ext.chunks(EXTENTS_PER_BLOCK) {
        let at = blocks.len();
        blocks.resize(at + BLOCK as usize, 0);
        let b = &mut blocks[at..];
        extent_header(b, chunk.len(), EXTENTS_PER_BLOCK, 0);
        for (i, &(l, n, p)) in chunk.iter().enumerate() {
            extent_leaf(&mut b[12 + 12 * i..], l, n, p);
        }
        nodes.push((chunk[0].0, next));
        next += 1;
    }
    let mut depth = 1u16;
    while nodes.len() > EXTENTS_IN_INODE {
        let mut upper = Vec::new();
        for chunk in nodes.chunks(EXTENTS_PER_BLOCK) {
            let at = blocks.len();
            blocks.resize(at + BLOCK as usize, 0);
            let b = &mut blocks[at..];
            extent_header(b, chunk.len(), EXTENTS_PER_BLOCK, depth);
            for (i, &(l, child)) in chunk.iter().enumerate() {
                extent_index(&mut b[12 + 12 * i..], l, child);
            }
            upper.push((chunk[0].0, next));
            next += 1;
        }
        nodes = upper;
        depth += 1;
    }
    extent_header(&mut root, nodes.len(), EXTENTS_IN_INODE, depth);
    for (i, &(l, child)) in nodes.iter().enumerate() {
        extent_index(&mut root[12 + 12 * i..], l, child);
    }
    (root, blocks)
}

fn file_type(kind: &NodeKind) -> (u16, u8) {
    match kind {
        NodeKind::Directory { .. } => (ifmt::DIR, ftype::DIR),
        NodeKind::Regular { .. } => (ifmt::REG, ftype::REG),
        NodeKind::Symlink { .. } => (ifmt::LNK, ftype::SYMLINK),
        NodeKind::CharDevice { .. } => (ifmt::CHR, ftype::CHR),
        NodeKind::BlockDevice { .. } => (ifmt::BLK, ftype::BLK),
        NodeKind::Fifo => (ifmt::FIFO, ftype::FIFO),
        NodeKind::Socket => (ifmt::SOCK, ftype::SOCK),
    }
}

/// Extents of inode `idx` and where its tree blocks go.
fn inode_extents(plan: &Plan<'_>, idx: usize) -> Option<(Vec<Extent>, u64)> {
    let p = &plan.inodes[idx];
    let meta = plan.meta_block(idx);
    match p.body {
        Body::Dir { blocks, .. } => match p.hot_dir {
            // Directory blocks in the hot region, extent tree blocks in the metadata.
            Some(hot) => Some((contiguous_extents(blocks, hot), meta)),
            None => Some((contiguous_extents(blocks, meta), meta + blocks)),
        },
        Body::File { file, .. } => Some((plan.extents_of(file), p.hot_tree.unwrap_or(meta))),
        Body::SlowSymlink => Some((vec![(0, 1, meta)], meta + 1)),
        Body::FastSymlink | Body::Special => None,
    }
}

fn encode_inode(plan: &Plan<'_>, idx: usize, b: &mut [u8]) {
    let p = &plan.inodes[idx];
    let node = plan.tree.node(p.node);
    let meta = &node.meta;
    let (fmt, _) = file_type(&node.kind);
    put16(b, 0x00, fmt | (meta.mode & 0o7777) as u16);
    put16(b, 0x02, meta.uid as u16);
    put16(b, 0x78, (meta.uid >> 16) as u16);
    put16(b, 0x18, meta.gid as u16);
    put16(b, 0x7A, (meta.gid >> 16) as u16);
    let (lo, extra) = encode_time(meta.mtime);
    for (t, x) in [(0x08, 0x8C), (0x0C, 0x84), (0x10, 0x88), (0x90, 0x94)] {
        put32(b, t, lo);
        put32(b, x, extra);
    }
    put16(b, 0x1A, p.links as u16);
    put16(b, 0x80, EXTRA_ISIZE as u16);

    let mut blocks: u64 = 0;
    let mut flags = 0u32;
    let size: u64 = match (&node.kind, p.body) {
        (
            _,
            Body::Dir {
                blocks: n,
                tree_blocks,
                indexed,
            },
        ) => {
            if indexed {
                flags |= INDEX_FL;
            }
            blocks = n + tree_blocks;
            n * BLOCK
        }
        (_, Body::File { file, tree_blocks }) => {
            blocks = plan.files[file.0 as usize].blocks + tree_blocks;
            plan.tree.file(file).size
        }
        (NodeKind::Symlink { target }, Body::FastSymlink) => {
            b[0x28..0x28 + target.len()].copy_from_slice(target);
            target.len() as u64
        }
        (NodeKind::Symlink { target }, Body::SlowSymlink) => {
            blocks = 1;
            target.len() as u64
        }
        (NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor }, _) => {
            let (old, new) = encode_device(*major, *minor).unwrap_or((0, 0));
            put32(b, 0x28, old);
            put32(b, 0x2C, new);
            0
        }
        _ => 0,
    };
    if let Some((ext, base)) = inode_extents(plan, idx) {
        flags |= EXTENTS_FL;
        let (root, _) = build_extent_tree(&ext, base);
        b[0x28..0x28 + 60].copy_from_slice(&root);
    }
    put32(b, 0x04, size as u32);
    put32(b, 0x6C, (size >> 32) as u32);
    match p.xattr {
        XattrPlace::None => {}
        XattrPlace::Inline => {
            let entries = xattr_entries(&meta.xattrs).unwrap_or_default();
            put32(b, IBODY_XATTR_OFFSET, XATTR_MAGIC);
            encode_xattrs(
                &mut b[IBODY_XATTR_OFFSET + 4..INODE_SIZE as usize],
                0,
                &entries,
            );
        }
        XattrPlace::Block(i) => {
            blocks += 1;
            let blk = plan.xattr_block_no(i);
            put32(b, 0x68, blk as u32);
            put16(b, 0x76, (blk >> 32) as u16);
        }
    }
    let sectors = blocks * (BLOCK / 512);
    put32(b, 0x1C, sectors as u32);
    put16(b, 0x74, (sectors >> 32) as u16);
    put32(b, 0x20, flags);
}

/// The directory blocks of directory inode `idx`.
fn dir_blocks(plan: &Plan<'_>, idx: usize, seed: &[u8; 16]) -> Result<Vec<u8>, WriteError> {
    let p = &plan.inodes[idx];
    let NodeKind::Directory { entries } = &plan.tree.node(p.node).kind else {
        return Err(WriteError::Internal {
            reason: "directory plan for a non-directory".into(),
        });
    };
    let Body::Dir {
        blocks, indexed, ..
    } = p.body
    else {
        return Err(WriteError::Internal {
            reason: "directory without a directory body".into(),
        });
    };
    if indexed {
        return htree_blocks(plan, idx, entries, blocks, seed);
    }
    let mut buf = vec![0u8; (blocks * BLOCK) as usize];
    let bs = BLOCK as usize;
    let mut blk_start = 0usize;
    let mut at = 0usize;
    let mut last = 0usize;
    let mut add = |buf: &mut Vec<u8>, name: &[u8], ino: u32, ft: u8| -> Result<(), WriteError> {
        let size = dirent_len(name.len());
        if at + size > bs {
            let rec = blk_start + bs - last;
            put16(buf, last + 4, rec as u16);
            blk_start += bs;
            at = 0;
        }
        if blk_start + bs > buf.len() {
            return Err(WriteError::Internal {
                reason: "directory outgrew its planned blocks".into(),
            });
        }
        last = blk_start + at;
        dirent(&mut buf[last..], ino, size, ft, name);
        at += size;
        Ok(())
    };
    add(&mut buf, b".", ino_of_index(idx), ftype::DIR)?;
    add(&mut buf, b"..", p.parent, ftype::DIR)?;
    for (name, child) in entries {
        let (_, ft) = file_type(&plan.tree.node(*child).kind);
        add(&mut buf, name, plan.ino_of[child.0 as usize], ft)?;
    }
    let rec = blk_start + bs - last;
    put16(&mut buf, last + 4, rec as u16);
    if blk_start + bs != buf.len() {
        return Err(WriteError::Internal {
            reason: "directory used fewer blocks than planned".into(),
        });
    }
    debug_assert_eq!(blocks, dir_block_count(entries.keys().map(|k| k.len())));
    Ok(buf)
}

/// The blocks of a hashed directory: the root (with '.' and '..'), interior
/// index blocks if any, then the leaves in hash order.
fn htree_blocks(
    plan: &Plan<'_>,
    idx: usize,
    entries: &std::collections::BTreeMap<Vec<u8>, NodeId>,
    blocks: u64,
    seed: &[u8; 16],
) -> Result<Vec<u8>, WriteError> {
    let h = Htree::new(entries, seed).map_err(|reason| WriteError::Internal { reason })?;
    if h.blocks() != blocks {
        return Err(WriteError::Internal {
            reason: "htree block count changed since planning".into(),
        });
    }
    let bs = BLOCK as usize;
    let mut buf = vec![0u8; blocks as usize * bs];
    let p = &plan.inodes[idx];
    let first_leaf = 1 + h.nodes;
    // Root: '.' and '..' (spanning the block), dx_root_info, then the index.
    dirent(&mut buf, ino_of_index(idx), 12, ftype::DIR, b".");
    dirent(&mut buf[12..], p.parent, bs - 12, ftype::DIR, b"..");
    buf[0x18 + 4] = DX_HASH_HALF_MD4;
    buf[0x18 + 5] = 8; // info_length
    buf[0x18 + 6] = u8::from(h.nodes > 0); // indirect_levels
    let index = |buf: &mut [u8], limit: usize, list: &[(u32, u32)]| {
        put16(buf, 0, limit as u16);
        put16(buf, 2, list.len() as u16);
        put32(buf, 4, list[0].1);
        for (i, &(hash, block)) in list.iter().enumerate().skip(1) {
            put32(buf, 8 * i, hash);
            put32(buf, 8 * i + 4, block);
        }
    };
    let leaf_refs: Vec<(u32, u32)> = h
        .leaves
        .iter()
        .enumerate()
        .map(|(i, &(_, hash))| (hash, (first_leaf + i) as u32))
        .collect();
    if h.nodes == 0 {
        index(&mut buf[0x20..bs], DX_ROOT_LIMIT, &leaf_refs);
    } else {
        let groups: Vec<&[(u32, u32)]> = leaf_refs.chunks(DX_NODE_LIMIT).collect();
        let node_refs: Vec<(u32, u32)> = groups
            .iter()
            .enumerate()
            .map(|(j, g)| (g[0].0, (1 + j) as u32))
            .collect();
        index(&mut buf[0x20..bs], DX_ROOT_LIMIT, &node_refs);
        for (j, g) in groups.iter().enumerate() {
            let b = &mut buf[(1 + j) * bs..(2 + j) * bs];
            // A fake empty entry spanning the block hides the index from linear readers.
            put32(b, 0, 0);
            put16(b, 4, bs as u16);
            index(&mut b[8..], DX_NODE_LIMIT, g);
        }
    }
    for (i, &(start, _)) in h.leaves.iter().enumerate() {
        let end = h.leaves.get(i + 1).map_or(h.entries.len(), |l| l.0);
        let b = &mut buf[(first_leaf + i) * bs..(first_leaf + i + 1) * bs];
        let mut at = 0usize;
        for (k, &(_, name, child)) in h.entries[start..end].iter().enumerate() {
            let size = if start + k + 1 == end {
                bs - at
            } else {
                dirent_len(name.len())
            };
            let (_, ft) = file_type(&plan.tree.node(child).kind);
            dirent(&mut b[at..], plan.ino_of[child.0 as usize], size, ft, name);
            at += size;
        }
    }
    Ok(buf)
}

/// Copies the logical blocks `runs` (lblk, count; ascending within a call)
/// of `f` from the spool, zeros where the blocks are partly holes.
fn copy_blocks<W: Write>(
    out: &mut Out<W>,
    spool: &dyn Spool,
    f: &FileData,
    runs: impl Iterator<Item = (u64, u64)>,
    node: Option<NodeId>,
    buf: &mut [u8],
) -> Result<(), WriteError> {
    for (lblk, count) in runs {
        let mut off = lblk * BLOCK;
        let end = (lblk + count) * BLOCK;
        let mut ei = f.extents.partition_point(|e| e.file_offset + e.len <= off);
        while off < end {
            let n = (buf.len() as u64).min(end - off) as usize;
            let stop = off + n as u64;
            while ei < f.extents.len() && f.extents[ei].file_offset + f.extents[ei].len <= off {
                ei += 1;
            }
            let overlaps = f.extents[ei..].iter().take_while(|e| e.file_offset < stop);
            let covered: u64 = overlaps
                .clone()
                .map(|e| (e.file_offset + e.len).min(stop) - e.file_offset.max(off))
                .sum();
            let chunk = &mut buf[..n];
            if covered < n as u64 {
                chunk.fill(0);
            }
            for e in overlaps {
                let s = e.file_offset.max(off);
                let t = (e.file_offset + e.len).min(stop);
                let dst = &mut chunk[(s - off) as usize..(t - off) as usize];
                let at = e.spool_offset + (s - e.file_offset);
                spool
                    .read_at(f.layer, at, dst)
                    .map_err(|source| WriteError::Spool {
                        layer: f.layer,
                        offset: at,
                        len: dst.len(),
                        node,
                        source,
                    })?;
            }
            out.write(chunk)?;
            off = stop;
        }
    }
    Ok(())
}

/// Per-group counts: (used blocks, used inodes, directories).
struct GroupStats {
    free_blocks: Vec<u64>,
    free_inodes: Vec<u64>,
    dirs: Vec<u64>,
}

fn group_stats(plan: &Plan<'_>, used: &[(u64, u64)]) -> GroupStats {
    let g = &plan.geo;
    let mut used_blocks = vec![0u64; g.groups as usize];
    for &(mut s, e) in used {
        while s < e {
            let grp = s / g.blocks_per_group;
            let t = e.min((grp + 1) * g.blocks_per_group);
            used_blocks[grp as usize] += t - s;
            s = t;
        }
    }
    let free_blocks = (0..g.groups)
        .map(|grp| {
            let len = g.blocks_count.min((grp + 1) * g.blocks_per_group) - grp * g.blocks_per_group;
            len - used_blocks[grp as usize]
        })
        .collect();
    let last_used = u64::from(ino_of_index(plan.inodes.len() - 1)).max(u64::from(FIRST_INO) - 1);
    let free_inodes = (0..g.groups)
        .map(|grp| {
            let first = grp * g.inodes_per_group;
            g.inodes_per_group - last_used.saturating_sub(first).min(g.inodes_per_group)
        })
        .collect();
    let mut dirs = vec![0u64; g.groups as usize];
    for (i, p) in plan.inodes.iter().enumerate() {
        if matches!(p.body, Body::Dir { .. }) {
            dirs[((u64::from(ino_of_index(i)) - 1) / g.inodes_per_group) as usize] += 1;
        }
    }
    GroupStats {
        free_blocks,
        free_inodes,
        dirs,
    }
}

fn superblock(plan: &Plan<'_>, opts: &Ext4Options, stats: &GroupStats) -> [u8; 1024] {
    let g = &plan.geo;
    let mut s = [0u8; 1024];
    let free_blocks: u64 = stats.free_blocks.iter().sum();
    let free_inodes: u64 = stats.free_inodes.iter().sum();
    put32(&mut s, 0x00, (g.groups * g.inodes_per_group) as u32);
    put32(&mut s, 0x04, g.blocks_count as u32);
    put32(&mut s, 0x0C, free_blocks as u32);
    put32(&mut s, 0x10, free_inodes as u32);
    put32(&mut s, 0x14, 0); // first data block
    put32(&mut s, 0x18, 2); // log2(4096) - 10
    put32(&mut s, 0x1C, 2);
    put32(&mut s, 0x20, g.blocks_per_group as u32);
    put32(&mut s, 0x24, g.blocks_per_group as u32);
    put32(&mut s, 0x28, g.inodes_per_group as u32);
    put16(&mut s, 0x36, 0xFFFF); // max mount count: -1
    put16(&mut s, 0x38, 0xEF53);
    put16(&mut s, 0x3A, 1); // clean
    put16(&mut s, 0x3C, 1); // errors: continue
    put32(&mut s, 0x4C, 1); // dynamic revision
    put32(&mut s, 0x54, FIRST_INO);
    put16(&mut s, 0x58, INODE_SIZE as u16);
    put32(
        &mut s,
        0x5C,
        feature::COMPAT_EXT_ATTR | feature::COMPAT_DIR_INDEX | feature::COMPAT_SPARSE_SUPER2,
    );
    put32(
        &mut s,
        0x60,
        feature::INCOMPAT_FILETYPE | feature::INCOMPAT_EXTENTS | feature::INCOMPAT_FLEX_BG,
    );
    put32(
        &mut s,
        0x64,
        feature::RO_COMPAT_SPARSE_SUPER
            | feature::RO_COMPAT_LARGE_FILE
            | feature::RO_COMPAT_HUGE_FILE
            | feature::RO_COMPAT_DIR_NLINK
            | feature::RO_COMPAT_EXTRA_ISIZE,
    );
    s[0x68..0x78].copy_from_slice(&opts.uuid);
    s[0x78..0x78 + opts.label.len()].copy_from_slice(&opts.label);
    s[0xEC..0xFC].copy_from_slice(&opts.hash_seed);
    s[0xFC] = 1; // half_md4
    put32(&mut s, 0x100, 0x000C); // user_xattr, acl
    put16(&mut s, 0x15C, EXTRA_ISIZE as u16);
    put16(&mut s, 0x15E, EXTRA_ISIZE as u16);
    put32(&mut s, 0x160, 0x2); // unsigned directory hash
    s[0x174] = 4; // 16 groups per flex group
    // s_backup_bgs (0x24C) stay 0: with sparse_super2, no backup superblocks.
    s
}

pub(crate) fn write<W: Write>(
    plan: &Plan<'_>,
    spool: &dyn Spool,
    opts: &Ext4Options,
    out: W,
) -> Result<(), WriteError> {
    let g = plan.geo;
    let mut out = Out {
        w: BufWriter::with_capacity(IO_BUF, out),
        pos: 0,
    };
    let used = plan.used_ranges();
    let stats = group_stats(plan, &used);

    // Superblock and group descriptors.
    let mut head = vec![0u8; ((1 + g.gdt_blocks) * BLOCK) as usize];
    head[1024..2048].copy_from_slice(&superblock(plan, opts, &stats));
    for grp in 0..g.groups as usize {
        let d = &mut head[BLOCK as usize + 32 * grp..];
        let grp64 = grp as u64;
        put32(d, 0x00, (plan.meta_start + grp64) as u32);
        put32(d, 0x04, (plan.meta_start + g.groups + grp64) as u32);
        put32(
            d,
            0x08,
            (plan.meta_start + 2 * g.groups + grp64 * g.itable_blocks) as u32,
        );
        put16(d, 0x0C, stats.free_blocks[grp] as u16);
        put16(d, 0x0E, stats.free_inodes[grp] as u16);
        put16(d, 0x10, stats.dirs[grp] as u16);
    }
    out.write(&head)?;

    // Data regions.
    let mut buf = vec![0u8; IO_BUF];
    for layer in &plan.tree.layers {
        for id in layer {
            let place = &plan.files[id.0 as usize];
            let live = place.owner.is_some();
            if place.blocks == 0 || (!live && matches!(opts.deleted_data, DeletedData::Zero)) {
                continue;
            }
            out.seek_block(place.phys)?;
            let node = place.owner.map(|i| plan.inodes[i as usize].node);
            let f = plan.tree.file(*id);
            copy_blocks(&mut out, spool, f, block_runs(f), node, &mut buf)?;
        }
    }

    // Hot region: copies of hot file blocks and hot directories, in access order.
    if let Some(hot) = &plan.hot {
        out.seek_block(hot.start)?;
        for item in &hot.items {
            match *item {
                HotItem::File { file, lblk, count } => {
                    let place = &plan.files[file.0 as usize];
                    let node = place.owner.map(|i| plan.inodes[i as usize].node);
                    let f = plan.tree.file(file);
                    let runs = std::iter::once((lblk, count));
                    copy_blocks(&mut out, spool, f, runs, node, &mut buf)?;
                }
                HotItem::Dir { index } => {
                    let blocks = dir_blocks(plan, index, &opts.hash_seed)?;
                    out.write(&blocks)?;
                }
                HotItem::Tree { index } => {
                    let Some((ext, base)) = inode_extents(plan, index) else {
                        return Err(WriteError::Internal {
                            reason: "hot extent tree of an inode without extents".into(),
                        });
                    };
                    if out.pos != base * BLOCK {
                        return Err(WriteError::Internal {
                            reason: "hot extent tree blocks out of place".into(),
                        });
                    }
                    out.write(&build_extent_tree(&ext, base).1)?;
                }
            }
        }
        if out.pos != hot.end() * BLOCK {
            return Err(WriteError::Internal {
                reason: "hot region does not end where planned".into(),
            });
        }
    }

    // Bitmaps.
    out.seek_block(plan.meta_start)?;
    let mut ri = 0usize;
    for grp in 0..g.groups {
        let first = grp * g.blocks_per_group;
        let end = g.blocks_count.min(first + g.blocks_per_group);
        let b = &mut buf[..BLOCK as usize];
        b.fill(0);
        while ri < used.len() && used[ri].1 <= first {
            ri += 1;
        }
        for &(s, e) in used[ri..].iter().take_while(|r| r.0 < end) {
            set_bits(b, s.max(first) - first, e.min(end) - first);
        }
        set_bits(b, end - first, BITS_PER_BLOCK);
        out.write(b)?;
    }
    let last_used = u64::from(ino_of_index(plan.inodes.len() - 1)).max(u64::from(FIRST_INO) - 1);
    for grp in 0..g.groups {
        let first = grp * g.inodes_per_group;
        let b = &mut buf[..BLOCK as usize];
        b.fill(0);
        set_bits(
            b,
            0,
            last_used.saturating_sub(first).min(g.inodes_per_group),
        );
        set_bits(b, g.inodes_per_group, BITS_PER_BLOCK);
        out.write(b)?;
    }

    // Inode tables.
    let table = &mut buf[..BLOCK as usize];
    for grp in 0..g.groups {
        for blk in 0..g.itable_blocks {
            table.fill(0);
            for slot in 0..INODES_PER_BLOCK {
                let ino = grp * g.inodes_per_group + blk * INODES_PER_BLOCK + slot + 1;
                let Some(idx) = index_of_ino(ino as u32).filter(|&i| i < plan.inodes.len()) else {
                    continue;
                };
                let at = (slot * INODE_SIZE) as usize;
                encode_inode(plan, idx, &mut table[at..at + INODE_SIZE as usize]);
            }
            out.write(table)?;
        }
    }

    // Per-inode metadata blocks, in inode order.
    for (idx, p) in plan.inodes.iter().enumerate() {
        let node = plan.tree.node(p.node);
        match (p.body, &node.kind) {
            (Body::Dir { .. }, _) if p.hot_dir.is_some() => {}
            (Body::Dir { .. }, _) => {
                out.seek_block(plan.dir_block(idx))?;
                let blocks = dir_blocks(plan, idx, &opts.hash_seed)?;
                out.write(&blocks)?;
            }
            // Extent tree blocks already written in the hot region.
            (Body::File { .. }, _) if p.hot_tree.is_some() => continue,
            (Body::File { .. }, _) => {}
            (Body::SlowSymlink, NodeKind::Symlink { target }) => {
                out.seek_block(plan.meta_block(idx))?;
                let mut b = vec![0u8; BLOCK as usize];
                b[..target.len()].copy_from_slice(target);
                out.write(&b)?;
            }
            _ => continue,
        }
        if let Some((ext, base)) = inode_extents(plan, idx) {
            let (_, tree_blocks) = build_extent_tree(&ext, base);
            if !tree_blocks.is_empty() {
                out.seek_block(base)?;
                out.write(&tree_blocks)?;
            }
        }
    }

    // Shared xattr blocks.
    for (i, (block, refcount)) in plan.xattr_blocks.iter().enumerate() {
        out.seek_block(plan.xattr_block_no(i as u32))?;
        let mut b = block.clone();
        put32(&mut b, 4, *refcount);
        out.write(&b)?;
    }
    if out.pos > plan.meta_end * BLOCK {
        return Err(WriteError::Internal {
            reason: "metadata overran its planned end".into(),
        });
    }
    out.pad_to(g.blocks_count * BLOCK)?;
    let pos = out.pos;
    out.w.flush().map_err(|source| WriteError::Write {
        offset: pos,
        source,
    })?;
    Ok(())
}
