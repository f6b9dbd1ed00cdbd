//! Applying parsed layers to a [`Tree`], in order.
//!
//! Rules, where the spec leaves room (all tested):
//! - Within a layer, whiteouts and opaque markers apply first (they only
//!   hide lower layers), then the other entries sorted by path (a parent
//!   before its children; same-path duplicates keep tar order, the last
//!   wins). A hard link applies at its place, or at the end when its
//!   target is an entry of the layer that comes later, and may name a
//!   lower file that the layer's own whiteouts removed. So the result does
//!   not depend on entry order.
//! - A whiteout or opaque marker inside a directory that the layer itself
//!   puts where the lower layers have no directory (a directory replacing
//!   a symlink) concerns that new directory only, never the symlink's
//!   target.
//! - A whiteout or opaque marker for a path that does not exist is ignored
//!   (as containerd does). aufs metadata (`.wh..wh.*` names, anything
//!   under `/.wh..wh.*/`) is not part of the image; files in
//!   `/.wh..wh.plnk/` remain hard-link targets for the layer (as Docker
//!   keeps them).
//! - Missing parent directories are created with mode 0755, uid/gid 0 and
//!   mtime 0 (the epoch), so the output does not depend on the clock.
//! - Symlinks in the *parent* part of a path resolve inside the image root
//!   (as containerd and umoci do); the last component is never followed,
//!   and nothing can escape the root. A parent that is a file is an error.
//! - A directory entry over an existing directory keeps its children and
//!   takes the entry's mode, owner, mtime and xattrs (old xattrs are gone).
//! - A hard link shares the target's node (its own header metadata is
//!   ignored); an upper layer replacing one of the names gives that name a
//!   new node and the other names keep the old one. A hard link to a
//!   missing path or to a directory is an error.
//! - xattrs outside `user.`, `trusted.`, `security.` and the two POSIX ACL
//!   names (`system.posix_acl_access`, `system.posix_acl_default`, in the
//!   kernel's xattr format as Go's archive/tar writes them) are dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;

use sha2::{Digest as _, Sha256};

use super::entry::{LayerEntry, Op, ParsedLayer, entry_err};
use crate::error::LayerError;
use crate::oci::Digest;
use crate::tree::{FileData, FileId, Metadata, Node, NodeId, NodeKind, Tree};

/// Symlinks followed while resolving one path (Linux uses 40).
const MAX_FOLLOWS: usize = 40;

/// Whether a path lies in aufs metadata at the root (`/.wh..wh.*/…`).
fn is_aufs_meta(comps: &[Vec<u8>]) -> bool {
    comps.len() > 1 && comps[0].starts_with(b".wh..wh.")
}

/// Builds the tree from parsed layers.
pub(crate) struct Builder {
    tree: Tree,
}

fn implicit_dir() -> Node {
    Node {
        meta: Metadata {
            mode: 0o755,
            ..Metadata::default()
        },
        kind: NodeKind::Directory {
            entries: BTreeMap::new(),
        },
    }
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            tree: Tree::new(Metadata {
                mode: 0o755,
                ..Metadata::default()
            }),
        }
    }

    fn entries_mut(&mut self, dir: NodeId) -> &mut BTreeMap<Vec<u8>, NodeId> {
        match &mut self.tree.node_mut(dir).kind {
            NodeKind::Directory { entries } => entries,
            // Only directories are ever pushed on the resolution stack.
            _ => unreachable!("resolve_dir returns directories only"),
        }
    }

    /// Resolves `comps` to a directory, following symlinks (inside the
    /// root). With `create`, missing directories are made; otherwise a
    /// missing or non-directory component gives `Ok(None)`.
    fn resolve_dir(&mut self, comps: &[Vec<u8>], create: bool) -> Result<Option<NodeId>, String> {
        let mut stack = vec![Tree::ROOT];
        let mut todo: VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut follows = 0;
        while let Some(c) = todo.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let cur = *stack.last().unwrap_or(&Tree::ROOT);
            let child = self.entries_mut(cur).get(&c).copied();
            match child {
                None => {
                    if !create {
                        return Ok(None);
                    }
                    if c.len() > 255 {
                        return Err("a symlink leads to a name longer than 255 bytes".into());
                    }
                    let id = self.tree.push_node(implicit_dir());
                    self.entries_mut(cur).insert(c, id);
                    stack.push(id);
                }
                Some(id) => match &self.tree.node(id).kind {
                    NodeKind::Directory { .. } => stack.push(id),
                    NodeKind::Symlink { target } => {
                        follows += 1;
                        if follows > MAX_FOLLOWS {
                            return Err("too many levels of symbolic links".into());
                        }
                        if target.first() == Some(&b'/') {
                            stack.truncate(1);
                        }
                        for part in target.split(|&b| b == b'/').rev() {
                            todo.push_front(part.to_vec());
                        }
                    }
                    _ if create => {
                        return Err(format!(
                            "parent component {:?} is not a directory",
                            String::from_utf8_lossy(&c)
                        ));
                    }
                    _ => return Ok(None),
                },
            }
        }
        Ok(stack.last().copied())
    }

    /// Applies one parsed layer; returns its spool and content digest.
    pub(crate) fn apply(&mut self, layer: ParsedLayer) -> Result<(File, Digest), LayerError> {
        let ParsedLayer {
            mut entries,
            files,
            file_hashes,
            spool,
        } = layer;
        // Order independent of the tar: by path; ties keep tar order.
        entries.sort_by(|a, b| a.comps.cmp(&b.comps));
        let digest = content_digest(&entries, &files, &file_hashes);

        // This layer's files, in placement order.
        let mut global = vec![FileId(u32::MAX); files.len()];
        let mut placed = Vec::with_capacity(files.len());
        let mut files: Vec<Option<FileData>> = files.into_iter().map(Some).collect();
        for e in &entries {
            if let Op::File(i) = e.op {
                let id = FileId(
                    u32::try_from(self.tree.files.len())
                        .map_err(|_| LayerError::Format("too many files".into()))?,
                );
                if let Some(f) = files[i].take() {
                    self.tree.files.push(f);
                    global[i] = id;
                    placed.push(id);
                }
            }
        }
        self.tree.layers.push(placed);

        // 0. What hard-link targets name in the lower layers, before this
        // layer's whiteouts hide them: a link may keep a file alive that the
        // same layer deletes (in tar order, the link comes first).
        let mut lower_targets: HashMap<&[Vec<u8>], NodeId> = HashMap::new();
        for e in &entries {
            if let Op::HardLink(t) = &e.op
                && let Some(node) = self.lookup(t)
            {
                lower_targets.insert(t, node);
            }
        }
        // 1. Whiteouts and opaque markers hide lower layers. One inside a
        // directory that this layer puts where a lower layer has something
        // else (a directory replacing the symlink `lib -> usr/lib`) concerns
        // that new, empty directory: it must not reach through the lower
        // symlink (in tar order the directory comes first).
        let mut written: HashMap<&[Vec<u8>], bool> = HashMap::new();
        for e in &entries {
            if !matches!(e.op, Op::Whiteout | Op::Opaque) {
                written.insert(&e.comps, matches!(e.op, Op::Dir));
            }
        }
        for e in &entries {
            let dir_comps = match e.op {
                Op::Whiteout => &e.comps[..e.comps.len().saturating_sub(1)],
                Op::Opaque => &e.comps[..],
                _ => continue,
            };
            if self.replaced_by_layer(dir_comps, &written) {
                continue;
            }
            match e.op {
                Op::Whiteout => {
                    if let Some((name, parent)) = e.comps.split_last()
                        && let Ok(Some(dir)) = self.resolve_dir(parent, false)
                    {
                        self.entries_mut(dir).remove(name);
                    }
                }
                Op::Opaque => {
                    if let Ok(Some(dir)) = self.resolve_dir(&e.comps, false) {
                        self.entries_mut(dir).clear();
                    }
                }
                _ => {}
            }
        }
        // Keep only the targets the whiteouts removed: any other target
        // must resolve when the link applies. (aufs link targets join below.)
        lower_targets.retain(|t, _| self.lookup(t).is_none());
        // 2. Entries in path order (parents first), hard links too, so that
        // entries below a link to a symlink resolve through it. A hard link
        // whose target this layer writes later waits until the end (a tar
        // may list a link before its target); chains of links inside the
        // layer resolve to their final target.
        let mut links: HashMap<&[Vec<u8>], &[Vec<u8>]> = HashMap::new();
        let mut last_write: HashMap<&[Vec<u8>], usize> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            match &e.op {
                Op::HardLink(t) => {
                    links.insert(&e.comps, t);
                }
                Op::Whiteout | Op::Opaque => {}
                _ => {
                    last_write.insert(&e.comps, i);
                }
            }
        }
        let mut deferred = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if is_aufs_meta(&e.comps) {
                // aufs metadata (`/.wh..wh.plnk/…`, `/.wh..wh.orph/…`) is
                // not part of the image. Files in `.wh..wh.plnk` are hard-link
                // targets of old aufs-built layers: kept aside for the links,
                // as Docker does.
                if let (Op::File(f), Some(b".wh..wh.plnk")) =
                    (&e.op, e.comps.first().map(Vec::as_slice))
                {
                    let id = self.tree.push_node(Node {
                        meta: e.meta.clone(),
                        kind: NodeKind::Regular { file: global[*f] },
                    });
                    lower_targets.insert(&e.comps, id);
                }
                continue;
            }
            match &e.op {
                Op::HardLink(target) => {
                    let mut t: &[Vec<u8>] = target;
                    for _ in 0..64 {
                        match links.get(t) {
                            Some(next) if *next != t => t = next,
                            _ => break,
                        }
                    }
                    if last_write.get(t).is_some_and(|&w| w > i) {
                        deferred.push((e, t));
                    } else {
                        self.apply_link(e, t, &lower_targets)?;
                    }
                }
                Op::Whiteout | Op::Opaque => {}
                _ => self
                    .apply_entry(e, &global)
                    .map_err(|r| entry_err(&e.raw, r))?,
            }
        }
        // 3. Hard links to targets written later in this layer.
        for (e, t) in deferred {
            self.apply_link(e, t, &lower_targets)?;
        }
        Ok((spool, digest))
    }

    /// Links `e`'s path to the node at `t` (or, if this layer's whiteouts
    /// removed it, to the node that was there before them; or to an aufs
    /// hard-link target of this layer).
    fn apply_link(
        &mut self,
        e: &LayerEntry,
        t: &[Vec<u8>],
        lower_targets: &HashMap<&[Vec<u8>], NodeId>,
    ) -> Result<(), LayerError> {
        let node = self.lookup(t).or_else(|| lower_targets.get(t).copied());
        let Some(node) = node else {
            return Err(entry_err(
                &e.raw,
                format!(
                    "hard link to missing target {:?}",
                    String::from_utf8_lossy(&t.join(&b'/'))
                ),
            ));
        };
        if matches!(self.tree.node(node).kind, NodeKind::Directory { .. }) {
            return Err(entry_err(&e.raw, "hard link to a directory"));
        }
        let Some((name, parent)) = e.comps.split_last() else {
            return Err(entry_err(&e.raw, "a hard link cannot replace /"));
        };
        let dir = self
            .resolve_dir(parent, true)
            .map_err(|r| entry_err(&e.raw, r))?
            .ok_or_else(|| entry_err(&e.raw, "parent not found"))?;
        self.entries_mut(dir).insert(name.clone(), node);
        Ok(())
    }

    /// Whether the layer replaces `dir` or one of its ancestors with
    /// something new: a non-directory, or a directory where the lower
    /// layers have none (only a symlink, a file, or nothing).
    fn replaced_by_layer(&mut self, dir: &[Vec<u8>], written: &HashMap<&[Vec<u8>], bool>) -> bool {
        for k in 1..=dir.len() {
            let Some(&is_dir) = written.get(&dir[..k]) else {
                continue;
            };
            if !is_dir {
                return true;
            }
            let lower_is_dir = self
                .lookup(&dir[..k])
                .is_some_and(|id| matches!(self.tree.node(id).kind, NodeKind::Directory { .. }));
            if !lower_is_dir {
                return true;
            }
        }
        false
    }

    /// The node at `path` (the last component not followed), if any.
    fn lookup(&mut self, path: &[Vec<u8>]) -> Option<NodeId> {
        let (name, parent) = path.split_last()?;
        match self.resolve_dir(parent, false) {
            Ok(Some(d)) => self.entries_mut(d).get(name).copied(),
            _ => None,
        }
    }

    fn apply_entry(&mut self, e: &LayerEntry, global: &[FileId]) -> Result<(), String> {
        let Some((name, parent)) = e.comps.split_last() else {
            return match e.op {
                Op::Dir => {
                    update_dir_meta(&mut self.tree.node_mut(Tree::ROOT).meta, &e.meta);
                    Ok(())
                }
                _ => Err("a layer cannot replace / with a non-directory".into()),
            };
        };
        let dir = self
            .resolve_dir(parent, true)?
            .ok_or_else(|| "parent not found".to_string())?;
        let existing = self.entries_mut(dir).get(name).copied();
        let kind = match &e.op {
            Op::Dir => {
                if let Some(id) = existing
                    && matches!(self.tree.node(id).kind, NodeKind::Directory { .. })
                {
                    update_dir_meta(&mut self.tree.node_mut(id).meta, &e.meta);
                    return Ok(());
                }
                NodeKind::Directory {
                    entries: BTreeMap::new(),
                }
            }
            Op::File(i) => NodeKind::Regular { file: global[*i] },
            Op::Symlink(t) => NodeKind::Symlink { target: t.clone() },
            Op::Char(major, minor) => NodeKind::CharDevice {
                major: *major,
                minor: *minor,
            },
            Op::Block(major, minor) => NodeKind::BlockDevice {
                major: *major,
                minor: *minor,
            },
            Op::Fifo => NodeKind::Fifo,
            Op::HardLink(_) | Op::Whiteout | Op::Opaque => return Ok(()),
        };
        let id = self.tree.push_node(Node {
            meta: e.meta.clone(),
            kind,
        });
        self.entries_mut(dir).insert(name.clone(), id);
        Ok(())
    }

    /// The finished tree: unreachable nodes dropped, nodes numbered in
    /// depth-first name order (so ids depend only on the final tree).
    pub(crate) fn finish(self) -> Tree {
        let old = self.tree;
        let mut new_id = vec![u32::MAX; old.nodes.len()];
        let mut order: Vec<NodeId> = vec![Tree::ROOT];
        new_id[0] = 0;
        let mut stack = vec![Tree::ROOT];
        while let Some(id) = stack.pop() {
            if let NodeKind::Directory { entries } = &old.node(id).kind {
                let mut fresh = Vec::new();
                for &child in entries.values() {
                    if new_id[child.0 as usize] == u32::MAX {
                        new_id[child.0 as usize] = order.len() as u32;
                        order.push(child);
                        fresh.push(child);
                    }
                }
                // Depth-first, children in name order.
                stack.extend(fresh.into_iter().rev());
            }
        }
        let nodes = order
            .iter()
            .map(|&id| {
                let mut n = old.node(id).clone();
                if let NodeKind::Directory { entries } = &mut n.kind {
                    for v in entries.values_mut() {
                        *v = NodeId(new_id[v.0 as usize]);
                    }
                }
                n
            })
            .collect();
        Tree {
            nodes,
            files: old.files,
            layers: old.layers,
        }
    }
}

/// A digest of a layer's content that ignores tar entry order,
/// compression and archive format: its entries sorted by path, each with
/// its operation, metadata and a hash of its data.
fn content_digest(entries: &[LayerEntry], files: &[FileData], hashes: &[u128]) -> Digest {
    fn bytes(h: &mut Sha256, b: &[u8]) {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    fn path(h: &mut Sha256, p: &[Vec<u8>]) {
        h.update((p.len() as u64).to_le_bytes());
        for c in p {
            bytes(h, c);
        }
    }
    let mut h = Sha256::new();
    h.update(b"lode-layer-content-v1\0");
    for e in entries {
        path(&mut h, &e.comps);
        match &e.op {
            Op::Dir => h.update(b"d"),
            Op::File(i) => {
                h.update(b"f");
                h.update(files[*i].size.to_le_bytes());
                for x in &files[*i].extents {
                    h.update(x.file_offset.to_le_bytes());
                    h.update(x.len.to_le_bytes());
                }
                h.update(hashes[*i].to_le_bytes());
            }
            Op::HardLink(t) => {
                h.update(b"h");
                path(&mut h, t);
            }
            Op::Symlink(t) => {
                h.update(b"s");
                bytes(&mut h, t);
            }
            Op::Char(a, b) | Op::Block(a, b) => {
                h.update(if matches!(e.op, Op::Char(..)) {
                    b"c"
                } else {
                    b"b"
                });
                h.update(a.to_le_bytes());
                h.update(b.to_le_bytes());
            }
            Op::Fifo => h.update(b"p"),
            Op::Whiteout => h.update(b"w"),
            Op::Opaque => h.update(b"o"),
        }
        let m = &e.meta;
        h.update(m.mode.to_le_bytes());
        h.update(m.uid.to_le_bytes());
        h.update(m.gid.to_le_bytes());
        h.update(m.mtime.sec.to_le_bytes());
        h.update(m.mtime.nsec.to_le_bytes());
        h.update((m.xattrs.len() as u64).to_le_bytes());
        for (k, v) in &m.xattrs {
            bytes(&mut h, k);
            bytes(&mut h, v);
        }
    }
    Digest::from_hasher(h)
}

/// A directory entry over an existing directory keeps the children and
/// takes all of the entry's metadata, xattrs included: the OCI spec
/// represents a modification as the new state, overlayfs shows the upper
/// directory's xattrs only, and umoci clears the old ones.
fn update_dir_meta(m: &mut Metadata, new: &Metadata) {
    *m = new.clone();
}
