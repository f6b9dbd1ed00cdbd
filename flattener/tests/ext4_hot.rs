//! Profile-guided layout: a hot list moves copies of file blocks and whole
//! directories into a hot region. Judged by e2fsck, the kernel's ext4 (the
//! mounted tree and FIEMAP) and byte comparisons with the plain layout.

mod ext4_support;
mod fiemap;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ext4_support::{Builder, Mount, check_image, have, meta, test_opts};
use flattener::ext4::{DeletedData, Ext4Options, HotEntry, HotList, ImageSummary};
use flattener::tree::{NodeKind, Tree};
use proptest::prelude::*;
use tempfile::TempDir;

const CHUNK: u64 = 512 * 1024;
const BLOCK: u64 = 4096;

fn bytes(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 ^ seed as u8)
        .collect()
}

/// Two layers: a big, a small and a sparse file, a hashed directory of 300
/// entries, a symlinked parent, a FIFO, a hard link, an empty file.
fn sample() -> Builder {
    let mut b = Builder::new();
    let usr = b.dir(Tree::ROOT, b"usr", meta(0o755));
    let big = b.file(usr, b"big", meta(0o644), 0, &bytes(150 * 4096 - 7, 1));
    b.link(usr, b"big-link", big);
    b.file(usr, b"small", meta(0o644), 0, &bytes(100, 2));
    let sparse = b.contents(
        0,
        8 << 20,
        &[
            (0, &bytes(5000, 3)),
            ((1 << 20) + 100, &bytes(9000, 4)),
            (4 << 20, &bytes(4096, 5)),
        ],
    );
    b.add(
        usr,
        b"sparse",
        meta(0o644),
        NodeKind::Regular { file: sparse },
    );
    b.file(usr, b"empty", meta(0o644), 0, b"");
    let lib = b.dir(usr, b"lib", meta(0o755));
    for i in 0..300u32 {
        let name = format!("module-with-a-longish-name-{i:04}.py");
        b.file(
            lib,
            name.as_bytes(),
            meta(0o644),
            0,
            &bytes(200 + i as usize, i),
        );
    }
    b.add(
        Tree::ROOT,
        b"lib",
        meta(0o777),
        NodeKind::Symlink {
            target: b"usr/lib".to_vec(),
        },
    );
    let app = b.dir(Tree::ROOT, b"app", meta(0o755));
    b.file(app, b"main.py", meta(0o644), 1, &bytes(20 * 1024, 9));
    let run = b.dir(Tree::ROOT, b"run", meta(0o755));
    b.add(run, b"fifo", meta(0o644), NodeKind::Fifo);
    b
}

fn entry(path: &str, blocks: &[(u64, u64)]) -> HotEntry {
    HotEntry {
        path: path.as_bytes().to_vec(),
        blocks: blocks.to_vec(),
    }
}

/// The list of the main test, with what each entry must contribute.
fn sample_list() -> HotList {
    HotList {
        entries: vec![
            entry("/usr/lib", &[(0, 1)]),
            entry("/usr/big", &[(10, 5), (0, 3)]),
            entry("/usr/small", &[(0, 10)]),
            entry("/usr/sparse", &[(0, 2000)]),
            entry("/nope", &[(0, 1)]),
            entry("/lib/module-with-a-longish-name-0007.py", &[(0, 1)]),
            entry("/lib", &[(0, 1)]),
            entry("/run/fifo", &[(0, 1)]),
            entry("/usr/big", &[(12, 6), (140, u64::MAX)]),
            entry("/usr/big-link", &[(3, 2)]),
            entry("/usr/lib", &[(0, 100)]),
            entry("/", &[]),
            entry("/app/main.py", &[(0, 1)]),
            entry("/usr/big", &[(u64::MAX, 5)]),
            entry("/usr/sparse", &[(100, 10)]),
            entry("/usr/empty", &[(0, 1)]),
            entry("/usr/small/x", &[(0, 1)]),
        ],
    }
}

/// What the hot region of `sample_list` must hold, front to back.
enum Slot {
    /// One block of a file: (path, logical block).
    File(&'static str, u64),
    /// All blocks of a directory.
    Dir(&'static str),
}

fn expected_slots() -> Vec<Slot> {
    use Slot::*;
    let mut v = vec![Dir("usr/lib")];
    v.extend((10..15).map(|l| File("usr/big", l)));
    v.extend((0..3).map(|l| File("usr/big", l)));
    v.push(File("usr/small", 0));
    // Blocks 0-1, 256-258 and 1024 are present; the rest are holes.
    for l in [0, 1, 256, 257, 258, 1024] {
        v.push(File("usr/sparse", l));
    }
    v.push(File("usr/lib/module-with-a-longish-name-0007.py", 0));
    v.extend((15..18).map(|l| File("usr/big", l)));
    v.extend((140..150).map(|l| File("usr/big", l)));
    v.extend((3..5).map(|l| File("usr/big", l)));
    v.push(Dir(""));
    v.push(File("app/main.py", 0));
    v
}

/// Entries of `sample_list` that must be skipped: /nope, /lib (a symlink),
/// /run/fifo, /usr/small/x.
const SKIPPED: usize = 4;

fn hot_opts(list: &HotList) -> Ext4Options {
    let mut o = test_opts();
    o.hot = Some(list.clone());
    o
}

/// Whole 512 KiB chunks of every layer region.
fn regions<'a>(image: &'a [u8], s: &ImageSummary) -> Vec<&'a [u8]> {
    s.data_regions
        .iter()
        .map(|r| {
            assert_eq!(r.start % CHUNK, 0);
            &image[r.start as usize..(r.start + r.len).next_multiple_of(CHUNK) as usize]
        })
        .collect()
}

/// (logical block -> physical block) of `path` as the kernel maps it.
fn fiemap(path: &Path) -> BTreeMap<u64, u64> {
    fiemap::fiemap(path).unwrap_or_else(|e| panic!("FIEMAP {}: {e}", path.display()))
}

/// Whether debugfs says block `blk` is marked in use in the block bitmap.
fn block_in_use(image: &Path, blk: u64) -> bool {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("testb {blk}"))
        .arg(image)
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Block {blk}")), "debugfs: {text}");
    !text.contains("not in use")
}

/// Physical blocks of the extent tree of `path` (`ETB` in debugfs's stat).
fn extent_tree_blocks(image: &Path, path: &str) -> Vec<u64> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("EXTENTS:"), "debugfs: {text}");
    text.split(", ")
        .flat_map(|t| t.split_whitespace())
        .filter_map(|t| t.strip_prefix("(ETB").and_then(|t| t.split_once("):")))
        .map(|(_, blk)| blk.parse().expect("block number"))
        .collect()
}

/// `b` written without and with `list`, each checked by [`check_image`]
/// (e2fsck, kernel mount): (temp dir, image path, summary), plain first.
fn check_plain_and_hot(b: &Builder, list: &HotList) -> [(TempDir, PathBuf, ImageSummary); 2] {
    [
        check_image(b, &test_opts()),
        check_image(b, &hot_opts(list)),
    ]
}

#[test]
fn hot_region_holds_the_listed_blocks_in_access_order() {
    if !have("debugfs", "reading extent trees and bitmaps") {
        return;
    }
    let b = sample();
    let list = sample_list();
    let [(_pd, plain_path, plain), (_hd, hot_path, hot)] = check_plain_and_hot(&b, &list);

    let region = hot.hot_region.expect("a hot region");
    assert_eq!(plain.hot_region, None);
    let last = hot.data_regions.last().unwrap();
    assert_eq!(
        region.start,
        (last.start + last.len).next_multiple_of(CHUNK)
    );
    assert_eq!(region.entries_skipped, SKIPPED);
    assert_eq!(region.len, region.blocks * BLOCK);
    assert_eq!(
        region.blocks,
        region.file_blocks + region.dir_blocks + region.tree_blocks
    );
    // usr/big's blocks are split in many runs: its extent tree no longer
    // fits in the inode, and its tree block opens the hot region.
    assert_eq!(region.tree_blocks, 1);
    assert_eq!(
        extent_tree_blocks(&hot_path, "/usr/big"),
        vec![region.start / BLOCK]
    );
    assert!(extent_tree_blocks(&plain_path, "/usr/big").is_empty());
    assert_eq!(
        hot.metadata_start,
        (region.start + region.len).next_multiple_of(CHUNK)
    );
    assert_eq!(hot.data_regions, plain.data_regions);

    // The layer regions are byte-identical to the plain layout.
    let (pi, hi) = (
        std::fs::read(&plain_path).unwrap(),
        std::fs::read(&hot_path).unwrap(),
    );
    assert!(regions(&pi, &plain) == regions(&hi, &hot));

    let (Some(pm), Some(hm)) = (Mount::new(&plain_path), Mount::new(&hot_path)) else {
        return;
    };
    // The kernel finds each listed block at its place in the hot region.
    let first = region.start / BLOCK;
    let mut at = first + region.tree_blocks;
    let mut file_blocks = 0;
    for slot in expected_slots() {
        match slot {
            Slot::File(path, lblk) => {
                let map = fiemap(&hm.path().join(path));
                assert_eq!(map.get(&lblk), Some(&at), "{path} block {lblk}");
                at += 1;
                file_blocks += 1;
            }
            Slot::Dir(path) => {
                let map = fiemap(&hm.path().join(path));
                assert!(map.len() > 1 || path.is_empty(), "{path}: {map:?}");
                let plain_map = fiemap(&pm.path().join(path));
                assert_eq!(map.len(), plain_map.len(), "{path}");
                for (i, (&l, &p)) in map.iter().enumerate() {
                    assert_eq!((l, p), (i as u64, at + i as u64), "{path}");
                }
                // In the plain layout the directory is in the metadata region.
                assert!(
                    plain_map
                        .values()
                        .all(|&p| p * BLOCK >= plain.metadata_start)
                );
                at += map.len() as u64;
            }
        }
    }
    assert_eq!(at - first, region.blocks);
    assert_eq!(region.blocks, 1 + 32 + region.dir_blocks);
    assert_eq!(file_blocks, region.file_blocks);

    // Every other block of every file stays where the plain layout has it,
    // and the cold copies of hot blocks are free in the bitmap.
    let mut cold_copies = 0;
    for path in ["usr/big", "usr/small", "usr/sparse", "app/main.py"]
        .into_iter()
        .map(String::from)
        .chain((0..300).map(|i| format!("usr/lib/module-with-a-longish-name-{i:04}.py")))
    {
        let (p, h) = (
            fiemap(&pm.path().join(&path)),
            fiemap(&hm.path().join(&path)),
        );
        assert_eq!(
            p.keys().collect::<Vec<_>>(),
            h.keys().collect::<Vec<_>>(),
            "{path}"
        );
        for (l, &pp) in &p {
            let hp = h[l];
            let in_hot = hp >= first && hp < first + region.blocks;
            assert!(in_hot || hp == pp, "{path} block {l}: {hp} vs {pp}");
            if in_hot && cold_copies < 8 {
                assert!(block_in_use(&plain_path, pp));
                assert!(!block_in_use(&hot_path, pp), "{path} block {l} at {pp}");
                assert!(block_in_use(&hot_path, hp));
                cold_copies += 1;
            }
        }
    }
    assert_eq!(cold_copies, 8);
    drop((pm, hm));
}

/// Inode number of every entry under a mounted image, by path ("/usr/big").
fn inode_numbers(root: &Path) -> BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![("/".to_string(), root.to_path_buf())];
    while let Some((rel, path)) = stack.pop() {
        let md = std::fs::symlink_metadata(&path).unwrap();
        out.insert(rel.clone(), md.ino());
        if md.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((child, e.path()));
            }
        }
    }
    out
}

/// What a lookup of each path of `PATHS` and of the modules reads, in order
/// (canonical paths; the root not included; empty when it does not resolve).
fn lookup_chain(path: &str) -> Vec<String> {
    let prefixes = |p: &str| -> Vec<String> {
        let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        (1..=parts.len())
            .map(|i| format!("/{}", parts[..i].join("/")))
            .collect()
    };
    match path {
        "/missing" | "/nope" | "/usr/small/x" => vec![],
        // /lib is a symlink to usr/lib: read, then followed.
        p if p.starts_with("/lib/") => {
            let mut v = vec!["/lib".to_string()];
            v.extend(prefixes(&format!("/usr{p}")));
            v
        }
        p => prefixes(p),
    }
}

/// Checks the inode numbers of a hot image against the plain one: the root
/// is 2; the nodes the lookups of `list` read are 11, 12, ... in order of
/// first appearance (hard links once); all others follow in plain order.
/// Returns how many inodes are hot.
fn check_hot_inodes(
    plain: &BTreeMap<String, u64>,
    hot: &BTreeMap<String, u64>,
    list: &HotList,
) -> u64 {
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        hot.keys().collect::<Vec<_>>()
    );
    assert_eq!((plain["/"], hot["/"]), (2, 2));
    // The renumbering is a bijection that keeps hard-link groups.
    let mut map: BTreeMap<u64, u64> = BTreeMap::new();
    for (path, &p) in plain {
        let h = hot[path];
        assert_eq!(*map.entry(p).or_insert(h), h, "{path}: hard link split");
    }
    let mut inverse: Vec<u64> = map.values().copied().collect();
    inverse.sort_unstable();
    inverse.dedup();
    assert_eq!(inverse.len(), map.len(), "two inodes merged");

    let mut order: Vec<u64> = Vec::new();
    for e in &list.entries {
        for path in lookup_chain(std::str::from_utf8(&e.path).unwrap()) {
            let p = plain[&path];
            if !order.contains(&p) {
                order.push(p);
            }
        }
    }
    for (k, p) in order.iter().enumerate() {
        assert_eq!(map[p], 11 + k as u64, "hot inode {k} (plain {p})");
    }
    // The others keep their relative (breadth-first) order, right after.
    let cold: Vec<u64> = map
        .iter()
        .filter(|(p, _)| **p != 2 && !order.contains(p))
        .map(|(_, &h)| h)
        .collect();
    let expect: Vec<u64> = (0..cold.len() as u64)
        .map(|k| 11 + order.len() as u64 + k)
        .collect();
    assert_eq!(cold, expect);
    order.len() as u64
}

/// Inode number of `path` as debugfs reads it from the image.
fn debugfs_inode(image: &Path, path: &str) -> u64 {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_once("Inode: ")
        .and_then(|(_, t)| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("debugfs stat {path}: {text}"))
}

#[test]
fn hot_inodes_are_numbered_first_in_list_order() {
    if !have("debugfs", "reading inode numbers") {
        return;
    }
    let b = sample();
    let list = sample_list();
    let [(_pd, plain_path, plain), (_hd, hot_path, hot)] = check_plain_and_hot(&b, &list);
    let region = hot.hot_region.unwrap();
    assert_eq!(hot.inodes, plain.inodes);
    // usr, usr/lib, usr/big (= big-link), usr/small, usr/sparse, lib (the
    // symlink, read on the way to a module), the module, run, run/fifo,
    // app, app/main.py, usr/empty. /nope and /usr/small/x resolve nowhere.
    let expected = [
        ("/usr", 11),
        ("/usr/lib", 12),
        ("/usr/big", 13),
        ("/usr/big-link", 13),
        ("/usr/small", 14),
        ("/usr/sparse", 15),
        ("/lib", 16),
        ("/usr/lib/module-with-a-longish-name-0007.py", 17),
        ("/run", 18),
        ("/run/fifo", 19),
        ("/app", 20),
        ("/app/main.py", 21),
        ("/usr/empty", 22),
        ("/", 2),
    ];
    assert_eq!(region.inodes, 12);
    for (path, ino) in expected {
        assert_eq!(debugfs_inode(&hot_path, path), ino, "{path}");
    }
    // In the plain image the root's entries come first, by name.
    assert_eq!(debugfs_inode(&plain_path, "/app"), 11);
    assert_eq!(debugfs_inode(&plain_path, "/usr"), 14);

    // The layer regions do not move.
    let (pi, hi) = (
        std::fs::read(&plain_path).unwrap(),
        std::fs::read(&hot_path).unwrap(),
    );
    assert!(regions(&pi, &plain) == regions(&hi, &hot));

    // The kernel agrees, '..' included, and the trees are equal (also
    // checked against the tree by check_image).
    let (Some(pm), Some(hm)) = (Mount::new(&plain_path), Mount::new(&hot_path)) else {
        return;
    };
    let (pn, hn) = (inode_numbers(pm.path()), inode_numbers(hm.path()));
    assert_eq!(check_hot_inodes(&pn, &hn, &list), 12);
    for (path, ino) in expected {
        assert_eq!(hn[path], ino, "{path}");
    }
    use std::os::unix::fs::MetadataExt;
    for (dir, parent) in [("usr/lib", 11), ("usr", 2), ("run", 2), ("app", 2)] {
        let md = std::fs::metadata(hm.path().join(dir).join("..")).unwrap();
        assert_eq!(md.ino(), parent, "{dir}/..");
    }
    for i in [0u32, 7, 150, 299] {
        let name = format!("usr/lib/module-with-a-longish-name-{i:04}.py");
        assert_eq!(
            std::fs::read(pm.path().join(&name)).unwrap(),
            std::fs::read(hm.path().join(&name)).unwrap()
        );
    }
    drop((pm, hm));
}

#[test]
fn hot_inodes_move_between_groups() {
    if !have("debugfs", "reading inode numbers") {
        return;
    }
    // 45,000 inodes: two groups of inodes. The hot paths are all in "c",
    // at the end of the breadth-first order (group 1); numbered first they
    // move to group 0, and as many cold ones move the other way.
    let mut b = Builder::new();
    let mut shared = meta(0o644);
    shared.xattrs.insert(b"user.big".to_vec(), vec![b'x'; 300]);
    let mut own = meta(0o644);
    own.xattrs.insert(b"user.big".to_vec(), vec![b'y'; 300]);
    for top in [b"a", b"b", b"c"] {
        let d = b.dir(Tree::ROOT, top, meta(0o755));
        for i in 0..15_000u32 {
            let name = format!("n{i:05}");
            match i % 3 {
                0 => {
                    b.dir(d, name.as_bytes(), meta(0o755));
                }
                1 => {
                    let m = if i % 100 == 1 {
                        shared.clone()
                    } else {
                        meta(0o644)
                    };
                    b.file(d, name.as_bytes(), m, 0, b"");
                }
                _ => {
                    b.add(d, name.as_bytes(), meta(0o600), NodeKind::Fifo);
                }
            }
        }
    }
    let c = b.dir(Tree::ROOT, b"z", meta(0o755));
    b.file(c, b"data", own, 0, &bytes(3 * 4096, 7));
    let mut list = HotList {
        entries: vec![
            entry("/c/n14997", &[]),
            entry("/z/data", &[(1, 1)]),
            entry("/c/n00003", &[]),
            entry("/c/n14998", &[]),
        ],
    };
    // And the last 333 directories of c (so more directories move to
    // group 0 than leave it).
    for i in (14_001..15_000).step_by(3) {
        list.entries.push(entry(&format!("/c/n{i:05}"), &[]));
    }
    let [(_pd, plain_path, plain), (_hd, hot_path, hot)] = check_plain_and_hot(&b, &list);
    let r = hot.hot_region.unwrap();
    // The listed directories are placed whole (empty: one block each).
    // Inodes: c, z, z/data, n14998 and 334 directories of c.
    assert_eq!((r.file_blocks, r.dir_blocks, r.inodes), (1, 334, 338));
    assert_eq!(hot.inodes, plain.inodes);
    assert!(hot.inodes > 45_000);
    // Plain: c's entries come last; hot: first.
    assert!(debugfs_inode(&plain_path, "/c/n14998") > 40_000);
    for (path, ino) in [
        ("/c", 11),
        ("/c/n14997", 12),
        ("/z", 13),
        ("/z/data", 14),
        ("/c/n00003", 15),
        ("/c/n14998", 16),
        ("/c/n14001", 17),
        ("/c/n14994", 348),
        ("/a", 349),
        ("/b", 350),
        ("/a/n00000", 351),
    ] {
        assert_eq!(debugfs_inode(&hot_path, path), ino, "{path}");
    }
    // Directories per group as dumpe2fs reads the descriptors, and as the
    // kernel's inode numbers say they must be (e2fsck, run by check_image,
    // checks them too).
    let dirs_per_group = |image: &Path| -> (Vec<u64>, Vec<u64>) {
        let out = Command::new("dumpe2fs")
            .arg(image)
            .output()
            .expect("dumpe2fs");
        let text = String::from_utf8_lossy(&out.stdout);
        let ipg: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Inodes per group:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("inodes per group");
        let described: Vec<u64> = text
            .lines()
            .filter_map(|l| l.trim().strip_suffix(" directories"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        let mut seen = vec![0u64; described.len()];
        let m = Mount::new(image).expect("mount");
        use std::os::unix::fs::MetadataExt;
        let mut stack = vec![m.path().to_path_buf()];
        while let Some(p) = stack.pop() {
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                seen[((md.ino() - 1) / ipg) as usize] += 1;
                for e in std::fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
            }
        }
        (described, seen)
    };
    if !have("dumpe2fs", "reading group descriptors") || Mount::new(&hot_path).is_none() {
        return;
    }
    let (pd, ps) = dirs_per_group(&plain_path);
    let (hd, hs) = dirs_per_group(&hot_path);
    assert_eq!(pd.len(), 2);
    assert_eq!((&pd, &hd), (&ps, &hs));
    assert_eq!(pd.iter().sum::<u64>(), hd.iter().sum::<u64>());
    assert_ne!(pd, hd, "no directory changed group");
    println!("directories per group: plain {pd:?}, hot {hd:?}");
}

#[test]
fn same_tree_and_list_give_the_same_bytes() {
    let b = sample();
    let list = sample_list();
    let one = b.write_vec(&hot_opts(&list));
    let two = b.write_vec(&hot_opts(&list));
    assert!(one == two, "two writes differ");
    let plain = b.write_vec(&test_opts());
    assert!(one != plain);
    // Another order is another hot region, over the same layer regions.
    let mut reversed = list.clone();
    reversed.entries.reverse();
    let other = b.write_vec(&hot_opts(&reversed));
    assert!(other != one);
    let dir = tempfile::tempdir().unwrap();
    let s = b.write(&hot_opts(&list), &dir.path().join("i"));
    assert_eq!(regions(&one, &s), regions(&other, &s));
    assert_eq!(regions(&one, &s), regions(&plain, &s));
}

#[test]
fn empty_or_useless_list_changes_nothing() {
    let b = sample();
    let plain = b.write_vec(&test_opts());
    for list in [
        HotList::default(),
        HotList {
            entries: vec![entry("/nope", &[(0, 9)]), entry("/usr/empty", &[(0, 9)])],
        },
    ] {
        assert!(b.write_vec(&hot_opts(&list)) == plain);
        let dir = tempfile::tempdir().unwrap();
        let s = b.write(&hot_opts(&list), &dir.path().join("i"));
        let r = s.hot_region.unwrap();
        assert_eq!((r.blocks, r.len), (0, 0));
    }
}

#[test]
fn deleted_data_zero_keeps_cold_copies_and_many_extents_need_tree_blocks() {
    if !have("debugfs", "reading extent trees") {
        return;
    }
    // A file whose every other block is hot: 400 extents, a deeper tree.
    let mut b = Builder::new();
    b.file(
        Tree::ROOT,
        b"striped",
        meta(0o644),
        0,
        &bytes(800 * 4096, 3),
    );
    b.file(Tree::ROOT, b"gone", meta(0o644), 0, &bytes(9000, 4));
    b.unlink(Tree::ROOT, b"gone");
    let list = HotList {
        entries: vec![HotEntry {
            path: b"/striped".to_vec(),
            blocks: (0..400).map(|i| (798 - 2 * i, 1)).collect(),
        }],
    };
    for deleted in [DeletedData::Zero, DeletedData::Keep] {
        let mut plain = test_opts();
        plain.deleted_data = deleted;
        let mut hot = hot_opts(&list);
        hot.deleted_data = deleted;
        let (_d, path, s) = check_image(&b, &hot);
        let r = s.hot_region.unwrap();
        // 800 extents: three leaf blocks under the inode's root.
        assert_eq!((r.file_blocks, r.tree_blocks), (400, 3));
        let mut etb = extent_tree_blocks(&path, "/striped");
        etb.sort_unstable();
        let first = r.start / BLOCK;
        assert_eq!(etb, vec![first, first + 1, first + 2]);
        let hi = std::fs::read(path).unwrap();
        let pi = b.write_vec(&plain);
        assert!(regions(&pi, &s) == regions(&hi, &s));
    }
}

#[derive(Debug, Clone)]
enum Pick {
    Path(usize),
    Module(u32),
}

const PATHS: &[&str] = &[
    "/usr/big",
    "/usr/big-link",
    "/usr/small",
    "/usr/sparse",
    "/usr/empty",
    "/usr/lib",
    "/usr",
    "/",
    "/app/main.py",
    "/lib",
    "/run/fifo",
    "/missing",
    "/lib/module-with-a-longish-name-0003.py",
];

fn list_strategy() -> impl Strategy<Value = HotList> {
    let pick = prop_oneof![
        (0..PATHS.len()).prop_map(Pick::Path),
        (0u32..300).prop_map(Pick::Module),
    ];
    let range = prop_oneof![
        (0u64..1100, 0u64..200),
        (0u64..200, Just(u64::MAX)),
        (Just(u64::MAX - 3), 0u64..10),
    ];
    prop::collection::vec((pick, prop::collection::vec(range, 0..4)), 0..24).prop_map(|v| HotList {
        entries: v
            .into_iter()
            .map(|(pick, blocks)| HotEntry {
                path: match pick {
                    Pick::Path(i) => PATHS[i].as_bytes().to_vec(),
                    Pick::Module(i) => {
                        format!("/usr/lib/module-with-a-longish-name-{i:04}.py").into_bytes()
                    }
                },
                blocks,
            })
            .collect(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn random_lists_keep_the_filesystem_and_the_layer_regions(list in list_strategy()) {
        if !have("e2fsck", "checking images") {
            return Ok(());
        }
        let b = sample();
        // e2fsck -fn clean and the mounted tree equal to the tree.
        let (_d, path, s) = check_image(&b, &hot_opts(&list));
        let hi = std::fs::read(&path).unwrap();
        let pi = b.write_vec(&test_opts());
        prop_assert!(regions(&pi, &s) == regions(&hi, &s));
        let r = s.hot_region.unwrap();
        prop_assert_eq!(r.blocks, r.file_blocks + r.dir_blocks + r.tree_blocks);
        if r.blocks == 0 {
            prop_assert!(hi == pi);
            prop_assert_eq!(r.inodes, 0);
            return Ok(());
        }
        // Hot inodes first, in list order; the rest in plain order.
        let dir = tempfile::tempdir().unwrap();
        let plain_path = dir.path().join("plain.ext4");
        std::fs::write(&plain_path, &pi).unwrap();
        let (Some(pm), Some(hm)) = (Mount::new(&plain_path), Mount::new(&path)) else {
            return Ok(());
        };
        let hot = check_hot_inodes(&inode_numbers(pm.path()), &inode_numbers(hm.path()), &list);
        prop_assert_eq!(r.inodes, hot);
    }
}
