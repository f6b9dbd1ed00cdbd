//! Profile-guided layout through the whole pipeline: `flatten` and
//! `flatten_to_writer` with [`FlattenOptions::with_hot`], on an image built
//! here and (with `LODE_CORPUS` set) on the corpus's python-app.

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::fs::{Mount, diff, e2fsck, have, list_dir};
use common::{Comp, E, oci_layout, tar};
use flattener::ext4::ImageSummary;
use flattener::tree::{NodeId, NodeKind, Tree};
use flattener::{
    FlattenOptions, HotEntry, HotList, ImageRef, build_tree, flatten, flatten_to_writer,
    write_flattened_with,
};

const CHUNK: u64 = 512 * 1024;

/// Bytes of every layer region, whole chunks.
fn regions<'a>(image: &'a [u8], s: &ImageSummary) -> Vec<&'a [u8]> {
    s.data_regions
        .iter()
        .map(|r| &image[r.start as usize..(r.start + r.len).next_multiple_of(CHUNK) as usize])
        .collect()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn layout(dir: &Path) -> ImageRef {
    let base = tar(&[
        E::dir("usr/bin"),
        E::file("usr/bin/tool", &pattern(300_000, 1)).mode(0o755),
        E::file("usr/bin/small", b"small"),
        E::symlink("bin", "usr/bin"),
        E::dir("etc"),
        E::file("etc/config", &pattern(9000, 2)),
    ]);
    let upper = tar(&[
        E::file("usr/bin/tool", &pattern(50_000, 3)).mode(0o755),
        E::file("app/main", &pattern(70_000, 4)),
    ]);
    let path = dir.join("layout");
    oci_layout(
        &path,
        &[("img", vec![(base, Comp::Gzip), (upper, Comp::Zstd)])],
    );
    ImageRef::parse(&format!("oci:{}:img", path.display())).unwrap()
}

#[test]
fn flatten_with_a_hot_list_keeps_layer_regions_and_the_tree() {
    if !have("e2fsck") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = layout(dir.path());
    let list = HotList {
        entries: vec![
            HotEntry::whole(b"/app/main".to_vec()),
            HotEntry {
                path: b"/bin/tool".to_vec(),
                blocks: vec![(3, 4), (0, 2)],
            },
            HotEntry::whole(b"/etc".to_vec()),
            HotEntry::whole(b"/missing".to_vec()),
            HotEntry::whole(b"/bin".to_vec()),
        ],
    };
    let plain_out = dir.path().join("plain.ext4");
    let hot_out = dir.path().join("hot.ext4");
    let plain = flatten(&img, &FlattenOptions::default(), &plain_out).unwrap();
    let opts = FlattenOptions::default().with_hot(&list);
    let hot = flatten(&img, &opts, &hot_out).unwrap();
    let streamed = flatten_to_writer(&img, &opts, std::io::sink()).unwrap();
    assert_eq!(streamed.sha256, hot.sha256);
    assert_ne!(plain.sha256, hot.sha256);

    let r = hot.image.hot_region.expect("hot region");
    assert_eq!(plain.image.hot_region, None);
    // app/main: 18 blocks; tool: 6 of its 13; /etc: one directory block.
    assert_eq!((r.file_blocks, r.dir_blocks), (18 + 6, 1));
    // /missing, and /bin (a symlink).
    assert_eq!(r.entries_skipped, 2);
    let (pi, hi) = (
        std::fs::read(&plain_out).unwrap(),
        std::fs::read(&hot_out).unwrap(),
    );
    assert!(regions(&pi, &plain.image) == regions(&hi, &hot.image));
    // The hot region holds app/main's bytes first.
    let main = pattern(70_000, 4);
    assert_eq!(
        &hi[r.start as usize..r.start as usize + main.len()],
        &main[..]
    );

    e2fsck(&plain_out).unwrap();
    e2fsck(&hot_out).unwrap();
    let (Some(pm), Some(hm)) = (Mount::new(&plain_out), Mount::new(&hot_out)) else {
        return;
    };
    let (a, b) = (list_dir(pm.path()), list_dir(hm.path()));
    assert!(a.len() > 8);
    assert!(a == b, "{:?}", diff(&a, &b, 10));
    // Hot inodes first: app, app/main, bin (the symlink, read on the way to
    // tool), usr, usr/bin, usr/bin/tool, etc; /missing adds nothing, /bin
    // is already numbered.
    assert_eq!(r.inodes, 7);
    for (path, ino) in [
        ("", 2),
        ("app", 11),
        ("app/main", 12),
        ("bin", 13),
        ("usr", 14),
        ("usr/bin", 15),
        ("usr/bin/tool", 16),
        ("etc", 17),
    ] {
        let md = std::fs::symlink_metadata(hm.path().join(path)).unwrap();
        assert_eq!(md.ino(), ino, "/{path}");
    }
    // The rest in plain order: etc/config, usr/bin/small.
    let ino = |m: &Mount, p: &str| std::fs::symlink_metadata(m.path().join(p)).unwrap().ino();
    assert_eq!(ino(&hm, "etc/config"), 18);
    assert_eq!(ino(&hm, "usr/bin/small"), 19);
    assert_eq!(ino(&pm, "app"), 11);
    assert!(ino(&pm, "etc/config") < ino(&pm, "usr/bin/small"));
}

/// Inode number of every entry under a mounted image, by path.
fn inode_numbers(root: &Path) -> BTreeMap<Vec<u8>, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(b"/".to_vec(), root.to_path_buf())];
    while let Some((rel, path)) = stack.pop() {
        let md = std::fs::symlink_metadata(&path).unwrap();
        out.insert(rel.clone(), md.ino());
        if md.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                let e = e.unwrap();
                let mut child = if rel == b"/" { Vec::new() } else { rel.clone() };
                child.push(b'/');
                child.extend_from_slice(e.file_name().as_bytes());
                stack.push((child, e.path()));
            }
        }
    }
    out
}

/// Paths of every directory and regular file under `dir` (pre-order, by name).
fn walk(tree: &Tree, dir: NodeId, path: &[u8], out: &mut Vec<Vec<u8>>) {
    out.push(path.to_vec());
    let NodeKind::Directory { entries } = &tree.node(dir).kind else {
        return;
    };
    for (name, &child) in entries {
        let mut p = path.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        match tree.node(child).kind {
            NodeKind::Directory { .. } => walk(tree, child, &p, out),
            NodeKind::Regular { .. } => out.push(p),
            _ => {}
        }
    }
}

fn lookup(tree: &Tree, path: &[u8]) -> NodeId {
    let mut at = Tree::ROOT;
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        let NodeKind::Directory { entries } = &tree.node(at).kind else {
            panic!(
                "not a directory on the way to {}",
                String::from_utf8_lossy(path)
            );
        };
        at = entries[c];
    }
    at
}

#[test]
fn corpus_python_app_with_python_hot() {
    let Ok(corpus) = std::env::var("LODE_CORPUS") else {
        println!("skipped: LODE_CORPUS not set");
        return;
    };
    if !have("e2fsck") {
        return;
    }
    let work = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let image = ImageRef::parse(&format!("oci:{corpus}/oci:python-app")).unwrap();
    let source = image.open(work.path()).unwrap();
    let flat = build_tree(&*source, &FlattenOptions::default(), work.path()).unwrap();

    // /usr/bin/python3 is a symlink (skipped, counted); python3.11 is the binary.
    let mut paths = vec![
        b"/usr/bin/python3".to_vec(),
        b"/usr/bin/python3.11".to_vec(),
    ];
    walk(
        &flat.tree,
        lookup(&flat.tree, b"/usr/lib/python3.11"),
        b"/usr/lib/python3.11",
        &mut paths,
    );
    let list = HotList {
        entries: paths.into_iter().map(HotEntry::whole).collect(),
    };

    let plain_out = work.path().join("plain.ext4");
    let hot_out = work.path().join("hot.ext4");
    let (plain, _) = write_flattened_with(
        &flat,
        &FlattenOptions::default(),
        std::fs::File::create(&plain_out).unwrap(),
    )
    .unwrap();
    let (hot, _) = write_flattened_with(
        &flat,
        &FlattenOptions::default().with_hot(&list),
        std::fs::File::create(&hot_out).unwrap(),
    )
    .unwrap();
    let r = hot.hot_region.unwrap();
    println!(
        "python-app: {} entries, hot region {} MiB at {} ({} file + {} dir + {} extent tree blocks, {} skipped), image {} -> {} MiB",
        list.entries.len(),
        r.len >> 20,
        r.start,
        r.file_blocks,
        r.dir_blocks,
        r.tree_blocks,
        r.entries_skipped,
        plain.size_bytes >> 20,
        hot.size_bytes >> 20
    );
    assert_eq!(r.entries_skipped, 1);
    assert!(r.file_blocks > 1000 && r.dir_blocks > 10, "{r:?}");
    assert_eq!(hot.data_regions, plain.data_regions);
    let (pi, hi) = (
        std::fs::read(&plain_out).unwrap(),
        std::fs::read(&hot_out).unwrap(),
    );
    assert!(regions(&pi, &plain) == regions(&hi, &hot));
    drop((pi, hi));
    e2fsck(&hot_out).unwrap();
    let (Some(pm), Some(hm)) = (Mount::new(&plain_out), Mount::new(&hot_out)) else {
        return;
    };
    let (a, b) = (list_dir(pm.path()), list_dir(hm.path()));
    assert!(a.len() > 1000);
    assert!(a == b, "{:?}", diff(&a, &b, 10));

    // Hot inodes: every prefix of every listed path (all canonical), in
    // order of first appearance, from 11; the rest keep the plain order.
    let (pn, hn) = (inode_numbers(pm.path()), inode_numbers(hm.path()));
    assert_eq!(pn.len(), hn.len());
    let mut order: Vec<u64> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in &list.entries {
        let parts: Vec<&[u8]> = e
            .path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        for i in 1..=parts.len() {
            let prefix = [b"/".as_slice(), &parts[..i].join(&b'/')].concat();
            let p = pn[&prefix];
            if seen.insert(p) {
                order.push(p);
            }
        }
    }
    let mut map: BTreeMap<u64, u64> = BTreeMap::new();
    for (path, &p) in &pn {
        let h = hn[path];
        assert_eq!(*map.entry(p).or_insert(h), h, "hard link split");
    }
    assert_eq!(r.inodes, order.len() as u64);
    for (k, p) in order.iter().enumerate() {
        assert_eq!(map[p], 11 + k as u64);
    }
    let cold: Vec<u64> = map
        .iter()
        .filter(|(p, _)| **p != 2 && !seen.contains(*p))
        .map(|(_, &h)| h)
        .collect();
    assert!(cold.windows(2).all(|w| w[0] + 1 == w[1]));
    assert_eq!(cold.first(), Some(&(11 + order.len() as u64)));
    assert_eq!(hn[b"/".as_slice()], 2);
    for (path, ino) in [
        ("/usr", 11),
        ("/usr/bin", 12),
        ("/usr/bin/python3", 13),
        ("/usr/bin/python3.11", 14),
    ] {
        assert_eq!(hn[path.as_bytes()], ino, "{path}");
    }
    println!("python-app: {} hot inodes of {}", order.len(), map.len());
}
