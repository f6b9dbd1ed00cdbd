//! Profile-guided placement: a copy of the blocks an earlier run read first
//! goes to a contiguous hot region, in the order they were read.

use std::collections::{BTreeMap, HashSet};

use super::extents::{block_runs, file_extents, tree_block_count};
use super::format::BLOCK;
use super::inodes::{Body, FilePlace, InodePlan, index_of_ino, ino_of_index};
use crate::tree::{FileId, NodeId, NodeKind, Tree};

/// Profile-guided placement: blocks to copy into the hot region, in order of
/// first access.
///
/// Build it from a profile recorded on an earlier run of the image (which
/// blocks of which files and directories were read, in order) and pass it as
/// [`FlattenOptions::hot`](crate::FlattenOptions::hot) or
/// [`Ext4Options::hot`](super::Ext4Options::hot). The list never makes a
/// flatten fail: paths that do not exist, symlinks, devices and the like are
/// skipped and counted ([`HotRegion::entries_skipped`]).
///
/// The list also numbers inodes: when it places anything, the nodes the
/// lookups of its paths read (directories on the way, parents first,
/// symlinks followed, the named node, skipped or not) get inode numbers 11,
/// 12, ... in order of first appearance, so a start reads a few contiguous
/// inode-table blocks (see the [module docs](super)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HotList {
    /// The entries, in order of first access.
    pub entries: Vec<HotEntry>,
}

/// One burst of reads of one file or directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotEntry {
    /// Absolute path in the final tree, e.g. b"/usr/bin/python3".
    ///
    /// Symlinks in the parent part resolve inside the image root (as in
    /// layer application); a path naming a symlink itself is skipped.
    pub path: Vec<u8>,
    /// (first logical 4 KiB block, block count) ranges of the file or
    /// directory, in the order they were first read.
    ///
    /// Ranges are clamped to the file, blocks already placed and holes are
    /// ignored. For a directory the ranges do not matter: all its blocks
    /// are placed at its first appearance. No ranges for a regular file:
    /// its inode was read (e.g. by `stat`), not its data; the entry only
    /// gives it an early inode number.
    pub blocks: Vec<(u64, u64)>,
}

impl HotEntry {
    /// An entry for the whole of `path`.
    pub fn whole(path: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            blocks: vec![(0, u64::MAX)],
        }
    }
}

/// Where the hot region landed (see [`ImageSummary::hot_region`](super::ImageSummary::hot_region)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HotRegion {
    /// Byte offset of the region (a multiple of 512 KiB, right after the
    /// chunk holding the end of the last layer region).
    pub start: u64,
    /// Length in bytes (`blocks * 4096`; 0 when nothing was placed, and
    /// then the image is the one without a list).
    pub len: u64,
    /// Blocks placed: `file_blocks + dir_blocks + tree_blocks`.
    pub blocks: u64,
    /// Copies of regular-file blocks.
    pub file_blocks: u64,
    /// Directory blocks (moved from the metadata region).
    pub dir_blocks: u64,
    /// Extent tree blocks of files with hot blocks whose extents do not
    /// fit in the inode (moved from the metadata region; the hot region
    /// starts with them).
    pub tree_blocks: u64,
    /// Entries whose path does not exist or names something other than a
    /// regular file or directory.
    pub entries_skipped: usize,
    /// Inodes numbered first, right after the root: those the lookups of
    /// the listed paths read (inodes 11 to `10 + inodes`, in order of first
    /// appearance; 0 when nothing was placed, as then nothing changes).
    pub inodes: u64,
}

/// One stretch of the hot region, in region order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HotItem {
    /// `count` logical blocks of `file` from `lblk`, all allocated.
    File { file: FileId, lblk: u64, count: u64 },
    /// All directory blocks of the inode planned at `index`.
    Dir { index: usize },
    /// The extent tree blocks of the file inode planned at `index`.
    Tree { index: usize },
}

/// The planned hot region.
#[derive(Debug, Default)]
pub(crate) struct HotPlan {
    /// First block of the region.
    pub(crate) start: u64,
    /// What the region holds, front to back.
    pub(crate) items: Vec<HotItem>,
    /// Per file, its hot runs (logical block, count, physical block),
    /// sorted by logical block.
    pub(crate) runs: BTreeMap<FileId, Vec<(u64, u64, u64)>>,
    pub(crate) summary: HotRegion,
}

impl HotPlan {
    /// One past the region's last block.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.summary.blocks
    }

    /// The hot runs of `file` (empty if it has none).
    pub(crate) fn runs_of(&self, file: FileId) -> &[(u64, u64, u64)] {
        self.runs.get(&file).map_or(&[], Vec::as_slice)
    }
}

/// The most symlinks followed while resolving one path (as the kernel).
const MAX_SYMLINKS: usize = 40;

/// The node at `path`, following symlinks in the parent part inside the
/// root; a final symlink is returned as is.
pub(crate) fn resolve(tree: &Tree, path: &[u8]) -> Option<NodeId> {
    lookup(tree, path).map(|(_, node)| node)
}

/// Resolves `path` as [`resolve`] does and also returns every node the
/// lookup reads, in order: each directory entry looked up (directories,
/// symlinks followed in the parent part, the final node), the root not
/// included.
pub(crate) fn lookup(tree: &Tree, path: &[u8]) -> Option<(Vec<NodeId>, NodeId)> {
    let components = |p: &[u8]| -> Vec<Vec<u8>> {
        p.split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .rev()
            .map(<[u8]>::to_vec)
            .collect()
    };
    // Pending components, next one last.
    let mut todo = components(path);
    let mut stack = vec![Tree::ROOT];
    let mut read = Vec::new();
    let mut followed = 0;
    while let Some(name) = todo.pop() {
        if name == b".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let dir = *stack.last()?;
        let NodeKind::Directory { entries } = &tree.nodes.get(dir.0 as usize)?.kind else {
            return None;
        };
        let child = *entries.get(&name)?;
        read.push(child);
        match &tree.nodes.get(child.0 as usize)?.kind {
            NodeKind::Symlink { target } if !todo.is_empty() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return None;
                }
                if target.first() == Some(&b'/') {
                    stack.truncate(1);
                }
                todo.extend(components(target));
            }
            _ if todo.is_empty() => return Some((read, child)),
            _ => stack.push(child),
        }
    }
    let last = *stack.last()?;
    Some((read, last))
}

/// Renumbers the planned inodes so that a start reads a few contiguous
/// inode-table blocks: the root stays first (inode 2), then every node the
/// lookups of the listed paths read (the directories on the way, parents
/// before children, symlinks followed, the named node itself; see
/// [`lookup`]) in order of first appearance, then all other inodes in their
/// breadth-first order. Entries whose path does not resolve add nothing; a
/// hard-linked file is one inode, numbered at its first appearance.
///
/// Everything planned so far that holds an inode number or index follows
/// the permutation: `ino_of`, the order of `inodes`, their `parent` fields,
/// [`FilePlace::owner`] and the indices in `hp.items`. Returns how many
/// inodes were numbered first.
pub(crate) fn renumber(
    tree: &Tree,
    list: &HotList,
    ino_of: &mut [u32],
    inodes: &mut Vec<InodePlan>,
    files: &mut [FilePlace],
    hp: &mut HotPlan,
) -> u64 {
    let n = inodes.len();
    // new_of_old[old index] = new index; order[new index] = old index.
    let mut new_of_old = vec![usize::MAX; n];
    let mut order: Vec<usize> = Vec::with_capacity(n);
    let mut take = |old: usize, order: &mut Vec<usize>| {
        if new_of_old[old] == usize::MAX {
            new_of_old[old] = order.len();
            order.push(old);
        }
    };
    take(0, &mut order);
    for entry in &list.entries {
        let Some((read, last)) = lookup(tree, &entry.path) else {
            continue;
        };
        for id in read.into_iter().chain(std::iter::once(last)) {
            let index = ino_of
                .get(id.0 as usize)
                .copied()
                .filter(|&ino| ino != 0)
                .and_then(index_of_ino)
                .filter(|&i| i < n);
            if let Some(index) = index {
                take(index, &mut order);
            }
        }
    }
    let hot = order.len() as u64 - 1;
    for old in 0..n {
        take(old, &mut order);
    }
    if order.iter().enumerate().all(|(new, &old)| new == old) {
        return hot;
    }
    let new_ino = |ino: u32| -> u32 {
        index_of_ino(ino)
            .filter(|&i| i < n)
            .map_or(ino, |i| ino_of_index(new_of_old[i]))
    };
    let mut tagged: Vec<(usize, InodePlan)> = inodes
        .drain(..)
        .enumerate()
        .map(|(old, p)| (new_of_old[old], p))
        .collect();
    tagged.sort_unstable_by_key(|t| t.0);
    inodes.extend(tagged.into_iter().map(|(_, mut p)| {
        if matches!(p.body, Body::Dir { .. }) {
            p.parent = new_ino(p.parent);
        }
        p
    }));
    for ino in ino_of.iter_mut().filter(|ino| **ino != 0) {
        *ino = new_ino(*ino);
    }
    for place in files.iter_mut() {
        if let Some(owner) = &mut place.owner {
            *owner = new_of_old[*owner as usize] as u32;
        }
    }
    for item in &mut hp.items {
        match item {
            HotItem::Dir { index } | HotItem::Tree { index } => *index = new_of_old[*index],
            HotItem::File { .. } => {}
        }
    }
    hot
}

/// Plans the hot region from `start`: resolves every entry, keeps each
/// block's first appearance, skips holes, gives hot directories their place
/// (`InodePlan::hot_dir`) and sizes the extent trees of files with hot
/// blocks.
///
/// The region holds, front to back: the extent tree blocks of files whose
/// extents no longer fit in the inode (in order of the files' first
/// appearance; a start reads them before the file's data), then the file
/// blocks and directories in order of first appearance.
pub(crate) fn plan(
    tree: &Tree,
    list: &HotList,
    ino_of: &[u32],
    inodes: &mut [InodePlan],
    files: &[FilePlace],
    start: u64,
) -> HotPlan {
    let mut hp = HotPlan {
        start,
        ..HotPlan::default()
    };
    let mut seen: HashSet<(FileId, u64)> = HashSet::new();
    let mut dirs_seen: HashSet<usize> = HashSet::new();
    for entry in &list.entries {
        let index = resolve(tree, &entry.path)
            .and_then(|id| ino_of.get(id.0 as usize).copied())
            .filter(|&ino| ino != 0)
            .and_then(index_of_ino)
            .filter(|&i| i < inodes.len());
        let Some(index) = index else {
            hp.summary.entries_skipped += 1;
            continue;
        };
        match (inodes[index].body, &tree.node(inodes[index].node).kind) {
            (Body::Dir { blocks, .. }, _) => {
                if dirs_seen.insert(index) {
                    hp.items.push(HotItem::Dir { index });
                    hp.summary.dir_blocks += blocks;
                }
            }
            (Body::File { file, .. }, NodeKind::Regular { .. }) => {
                let f = tree.file(file);
                let runs: Vec<(u64, u64)> = block_runs(f).collect();
                let file_blocks = f.size.div_ceil(BLOCK);
                for &(first, count) in &entry.blocks {
                    let lo = first.min(file_blocks);
                    let hi = first.saturating_add(count).min(file_blocks);
                    let mut ri = runs.partition_point(|r| r.0 + r.1 <= lo);
                    while ri < runs.len() && runs[ri].0 < hi {
                        let (rs, rc) = runs[ri];
                        for lblk in lo.max(rs)..hi.min(rs + rc) {
                            if !seen.insert((file, lblk)) {
                                continue;
                            }
                            match hp.items.last_mut() {
                                Some(HotItem::File {
                                    file: last,
                                    lblk: l,
                                    count: c,
                                }) if *last == file && *l + *c == lblk => *c += 1,
                                _ => hp.items.push(HotItem::File {
                                    file,
                                    lblk,
                                    count: 1,
                                }),
                            }
                            hp.summary.file_blocks += 1;
                        }
                        ri += 1;
                    }
                }
            }
            _ => hp.summary.entries_skipped += 1,
        }
    }

    // Hot runs relative to the data part of the region.
    let mut rel = 0u64;
    let mut order: Vec<FileId> = Vec::new();
    for item in &hp.items {
        match *item {
            HotItem::File { file, lblk, count } => {
                let runs = hp.runs.entry(file).or_default();
                if runs.is_empty() {
                    order.push(file);
                }
                runs.push((lblk, count, rel));
                rel += count;
            }
            HotItem::Dir { index } => rel += dir_blocks(&inodes[index]),
            HotItem::Tree { .. } => {}
        }
    }
    for runs in hp.runs.values_mut() {
        runs.sort_unstable();
    }
    // Split extents may need (more) extent tree blocks. Their number does
    // not depend on where the runs land (cold and hot pieces never merge).
    let mut trees: Vec<(usize, u64)> = Vec::new();
    for file in order {
        let Some(index) = files[file.0 as usize].owner.map(|i| i as usize) else {
            continue;
        };
        let n = file_extents(
            tree.file(file),
            files[file.0 as usize].phys,
            &hp.runs[&file],
        )
        .len();
        let blocks = tree_block_count(n as u64);
        if let Body::File { tree_blocks, .. } = &mut inodes[index].body {
            *tree_blocks = blocks;
        }
        if blocks > 0 {
            trees.push((index, blocks));
        }
    }
    // Final places: extent trees first, then the items in order.
    let mut next = start;
    for &(index, blocks) in &trees {
        inodes[index].hot_tree = Some(next);
        next += blocks;
        hp.summary.tree_blocks += blocks;
    }
    let data = next;
    for runs in hp.runs.values_mut() {
        for r in runs {
            r.2 += data;
        }
    }
    for item in &hp.items {
        match *item {
            HotItem::File { count, .. } => next += count,
            HotItem::Dir { index } => {
                inodes[index].hot_dir = Some(next);
                next += dir_blocks(&inodes[index]);
            }
            HotItem::Tree { .. } => {}
        }
    }
    hp.items.splice(
        0..0,
        trees.iter().map(|&(index, _)| HotItem::Tree { index }),
    );
    hp.summary.blocks = next - start;
    hp.summary.start = start * BLOCK;
    hp.summary.len = hp.summary.blocks * BLOCK;
    hp
}

fn dir_blocks(p: &InodePlan) -> u64 {
    match p.body {
        Body::Dir { blocks, .. } => blocks,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Metadata, Node};

    fn tree() -> Tree {
        let mut t = Tree::new(Metadata::default());
        let add = |t: &mut Tree, dir: NodeId, name: &[u8], kind: NodeKind| {
            let id = t.push_node(Node {
                meta: Metadata::default(),
                kind,
            });
            if let NodeKind::Directory { entries } = &mut t.node_mut(dir).kind {
                entries.insert(name.to_vec(), id);
            }
            id
        };
        let dir = || NodeKind::Directory {
            entries: BTreeMap::new(),
        };
        let usr = add(&mut t, Tree::ROOT, b"usr", dir());
        let lib = add(&mut t, usr, b"lib", dir());
        add(&mut t, lib, b"f", NodeKind::Fifo);
        add(
            &mut t,
            Tree::ROOT,
            b"lib",
            NodeKind::Symlink {
                target: b"usr/lib".to_vec(),
            },
        );
        add(
            &mut t,
            usr,
            b"abs",
            NodeKind::Symlink {
                target: b"/usr/../usr/lib".to_vec(),
            },
        );
        add(
            &mut t,
            Tree::ROOT,
            b"loop",
            NodeKind::Symlink {
                target: b"loop/x".to_vec(),
            },
        );
        t
    }

    #[test]
    fn paths_resolve_through_parent_symlinks_inside_the_root() {
        let t = tree();
        let lib = resolve(&t, b"/usr/lib").unwrap();
        let f = resolve(&t, b"/usr/lib/f").unwrap();
        assert_eq!(resolve(&t, b"/"), Some(Tree::ROOT));
        assert_eq!(resolve(&t, b""), Some(Tree::ROOT));
        assert_eq!(resolve(&t, b"/lib/f"), Some(f));
        assert_eq!(resolve(&t, b"usr//./lib/"), Some(lib));
        assert_eq!(resolve(&t, b"/usr/abs/f"), Some(f));
        assert_eq!(resolve(&t, b"/../../usr/lib/../lib/f"), Some(f));
        // A final symlink is the symlink itself.
        let l = resolve(&t, b"/lib").unwrap();
        assert!(matches!(t.node(l).kind, NodeKind::Symlink { .. }));
        assert_eq!(resolve(&t, b"/usr/lib/f/x"), None);
        assert_eq!(resolve(&t, b"/nope"), None);
        assert_eq!(resolve(&t, b"/loop/y"), None);
    }

    #[test]
    fn lookups_list_every_node_they_read_in_order() {
        let t = tree();
        let name = |id: NodeId| -> Vec<u8> {
            // The name of `id` in its directory (unique in this tree).
            t.nodes
                .iter()
                .find_map(|n| match &n.kind {
                    NodeKind::Directory { entries } => entries
                        .iter()
                        .find(|(_, c)| **c == id)
                        .map(|(k, _)| k.clone()),
                    _ => None,
                })
                .unwrap()
        };
        let names = |p: &[u8]| -> Vec<Vec<u8>> {
            let (read, last) = lookup(&t, p).unwrap();
            assert_eq!(Some(last), resolve(&t, p));
            read.into_iter().map(name).collect()
        };
        let v = |s: &[&str]| -> Vec<Vec<u8>> { s.iter().map(|x| x.as_bytes().to_vec()).collect() };
        assert_eq!(names(b"/usr/lib/f"), v(&["usr", "lib", "f"]));
        // The symlink is read, then its target's components.
        assert_eq!(names(b"/lib/f"), v(&["lib", "usr", "lib", "f"]));
        // abs -> /usr/../usr/lib: usr is looked up twice.
        assert_eq!(
            names(b"/usr/abs/f"),
            v(&["usr", "abs", "usr", "usr", "lib", "f"])
        );
        assert_eq!(names(b"/"), v(&[]));
        assert_eq!(names(b"/usr/.."), v(&["usr"]));
        assert_eq!(lookup(&t, b"/usr/lib/nope"), None);
    }
}
