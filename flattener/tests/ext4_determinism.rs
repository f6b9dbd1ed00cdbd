//! Determinism: the same tree gives the same bytes, pinned by a golden
//! digest; random trees written twice give identical, e2fsck-clean images.

mod ext4_support;

use ext4_support::{Builder, e2fsck_clean, have, meta, test_opts};
use std::io::Cursor;

use flattener::ext4::{DeletedData, write_image};
use flattener::tree::{NodeId, NodeKind, Timestamp, Tree};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn golden_tree() -> Builder {
    let mut b = Builder::new();
    let etc = b.dir(Tree::ROOT, b"etc", meta(0o755));
    b.file(etc, b"hostname", meta(0o644), 0, b"lode\n");
    let mut m = meta(0o4755);
    m.uid = 1000;
    m.gid = 100;
    m.mtime = Timestamp {
        sec: -86_400,
        nsec: 42,
    };
    m.xattrs.insert(
        b"security.capability".to_vec(),
        vec![1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    let bin = b.dir(Tree::ROOT, b"bin", meta(0o755));
    let tool = b.file(bin, b"tool", m, 0, &[0x7f, b'E', b'L', b'F']);
    b.link(etc, b"tool-link", tool);
    b.add(
        bin,
        b"sh",
        meta(0o777),
        NodeKind::Symlink {
            target: b"tool".to_vec(),
        },
    );
    b.add(
        bin,
        b"far",
        meta(0o777),
        NodeKind::Symlink {
            target: vec![b'z'; 100],
        },
    );
    b.add(
        etc,
        b"null",
        meta(0o666),
        NodeKind::CharDevice { major: 1, minor: 3 },
    );
    let sparse = b.contents(1, 1 << 20, &[(4096 * 10, b"middle")]);
    b.add(
        Tree::ROOT,
        b"sparse",
        meta(0o644),
        NodeKind::Regular { file: sparse },
    );
    let mut big = meta(0o644);
    big.xattrs.insert(b"user.comment".to_vec(), vec![b'c'; 300]);
    big.mtime = Timestamp {
        sec: 4_000_000_000,
        nsec: 999_999_999,
    };
    b.file(Tree::ROOT, b"late", big, 1, b"from the future");
    b
}

/// Changing this digest means the on-disk format changed: do it deliberately.
const GOLDEN_SHA256: &str = "9573510baf3daf845721099d21f27daebe2f0e6e210efc5354c6e98b47c3b59e";

#[test]
fn golden_digest_of_a_small_tree() {
    let b = golden_tree();
    let image = b.write_vec(&test_opts());
    let digest = hex::encode(Sha256::digest(&image));
    assert_eq!(
        digest, GOLDEN_SHA256,
        "the ext4 format changed; if deliberate, update GOLDEN_SHA256"
    );
    // The golden image is also a valid one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("golden.ext4");
    std::fs::write(&path, &image).unwrap();
    if have("e2fsck", "checking the golden image") {
        e2fsck_clean(&path);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Dir {
        parent: usize,
        name: Vec<u8>,
        mode: u32,
    },
    File {
        parent: usize,
        name: Vec<u8>,
        layer: u32,
        data: Vec<u8>,
        hole: u16,
        mode: u32,
    },
    Symlink {
        parent: usize,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    Device {
        parent: usize,
        name: Vec<u8>,
        major: u32,
        minor: u32,
    },
    Fifo {
        parent: usize,
        name: Vec<u8>,
    },
    HardLink {
        parent: usize,
        name: Vec<u8>,
        target: usize,
    },
    Remove {
        parent: usize,
        name: Vec<u8>,
    },
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![b'a'..=b'e', 0x80u8..=0xff], 1..6)
}

fn op() -> impl Strategy<Value = Op> {
    let idx = 0usize..64;
    prop_oneof![
        (idx.clone(), name(), 0u32..0o7777).prop_map(|(parent, name, mode)| Op::Dir {
            parent,
            name,
            mode
        }),
        (
            idx.clone(),
            name(),
            0u32..3,
            prop::collection::vec(any::<u8>(), 0..9000),
            any::<u16>(),
            0u32..0o7777
        )
            .prop_map(|(parent, name, layer, data, hole, mode)| Op::File {
                parent,
                name,
                layer,
                data,
                hole,
                mode
            }),
        (
            idx.clone(),
            name(),
            prop::collection::vec(1u8..=255, 1..200)
        )
            .prop_map(|(parent, name, target)| Op::Symlink {
                parent,
                name,
                target
            }),
        (idx.clone(), name(), 0u32..4096, 0u32..(1 << 20)).prop_map(
            |(parent, name, major, minor)| Op::Device {
                parent,
                name,
                major,
                minor
            }
        ),
        (idx.clone(), name()).prop_map(|(parent, name)| Op::Fifo { parent, name }),
        (idx.clone(), name(), 0usize..64).prop_map(|(parent, name, target)| Op::HardLink {
            parent,
            name,
            target
        }),
        (idx, name()).prop_map(|(parent, name)| Op::Remove { parent, name }),
    ]
}

fn build(ops: &[Op], times: &[(i64, u32)]) -> Builder {
    let mut b = Builder::new();
    let mut dirs: Vec<NodeId> = vec![Tree::ROOT];
    let mut leaves: Vec<NodeId> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let mut m = meta(0o644);
        let (sec, nsec) = times[i % times.len()];
        m.mtime = Timestamp { sec, nsec };
        m.uid = i as u32 * 7919;
        if i % 5 == 0 {
            m.xattrs.insert(
                format!("user.k{i}").into_bytes(),
                vec![i as u8; i * 13 % 200],
            );
        }
        match op {
            Op::Dir { parent, name, mode } => {
                m.mode = *mode;
                let d = b.dir(dirs[parent % dirs.len()], name, m);
                dirs.push(d);
            }
            Op::File {
                parent,
                name,
                layer,
                data,
                hole,
                mode,
            } => {
                m.mode = *mode;
                let off = u64::from(*hole) * 3;
                let runs: &[(u64, &[u8])] = if data.is_empty() { &[] } else { &[(off, data)] };
                let f = b.contents(
                    *layer,
                    off + data.len() as u64 + u64::from(*hole % 5000),
                    runs,
                );
                leaves.push(b.add(
                    dirs[parent % dirs.len()],
                    name,
                    m,
                    NodeKind::Regular { file: f },
                ));
            }
            Op::Symlink {
                parent,
                name,
                target,
            } => {
                leaves.push(b.add(
                    dirs[parent % dirs.len()],
                    name,
                    m,
                    NodeKind::Symlink {
                        target: target.clone(),
                    },
                ));
            }
            Op::Device {
                parent,
                name,
                major,
                minor,
            } => {
                let kind = NodeKind::BlockDevice {
                    major: *major,
                    minor: *minor,
                };
                leaves.push(b.add(dirs[parent % dirs.len()], name, m, kind));
            }
            Op::Fifo { parent, name } => {
                leaves.push(b.add(dirs[parent % dirs.len()], name, m, NodeKind::Fifo))
            }
            Op::HardLink {
                parent,
                name,
                target,
            } if !leaves.is_empty() => {
                let t = leaves[target % leaves.len()];
                b.link(dirs[parent % dirs.len()], name, t);
            }
            Op::HardLink { .. } => {}
            Op::Remove { parent, name } => b.unlink(dirs[parent % dirs.len()], name),
        }
    }
    b
}

/// The same filesystem with its nodes stored in another order (the root
/// stays first): node ids must not leak into the image.
fn permute_nodes(tree: &Tree, seed: u64) -> Tree {
    let n = tree.nodes.len();
    let mut order: Vec<usize> = (1..n).collect();
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order.insert(0, 0);
    let mut new_id = vec![0u32; n];
    for (new, &old) in order.iter().enumerate() {
        new_id[old] = new as u32;
    }
    let mut out = tree.clone();
    out.nodes = order.iter().map(|&old| tree.nodes[old].clone()).collect();
    for node in &mut out.nodes {
        if let NodeKind::Directory { entries } = &mut node.kind {
            for id in entries.values_mut() {
                *id = NodeId(new_id[id.0 as usize]);
            }
        }
    }
    out
}

fn times() -> impl Strategy<Value = Vec<(i64, u32)>> {
    prop::collection::vec((-(1i64 << 31)..(1i64 << 34), 0u32..1_000_000_000), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_write_identically_and_check_clean(
        ops in prop::collection::vec(op(), 0..80),
        times in times(),
        seed in any::<u64>(),
    ) {
        let b = build(&ops, &times);
        let opts = test_opts();
        let first = b.write_vec(&opts);
        // A rebuilt (equal) tree and a second run give the same bytes.
        let again = build(&ops, &times).write_vec(&opts);
        prop_assert!(first == again, "two writes of the same tree differ");
        let mut shuffled = Cursor::new(Vec::new());
        write_image(&permute_nodes(&b.tree, seed), &b.spool, &opts, &mut shuffled).unwrap();
        prop_assert!(first == shuffled.into_inner(), "node order changed the image");
        let mut keep = opts.clone();
        keep.deleted_data = DeletedData::Keep;
        let kept = b.write_vec(&keep);
        prop_assert_eq!(kept.len(), first.len());
        if have("e2fsck", "checking random images") {
            let dir = tempfile::tempdir().unwrap();
            for (n, img) in [("zero", &first), ("keep", &kept)] {
                let path = dir.path().join(n);
                std::fs::write(&path, img).unwrap();
                e2fsck_clean(&path);
            }
        }
    }
}

/// A name of 1 to 60 arbitrary bytes (no '/', no NUL, not '.' or '..').
fn long_name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 1..60).prop_filter("valid name", |n| {
        !n.contains(&b'/') && n.as_slice() != b"." && n.as_slice() != b".."
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Random directories big enough to be hashed, with arbitrary byte
    /// names: the kernel must find every entry and show exactly the tree.
    #[test]
    fn random_big_directories_mount_and_match(
        entries in prop::collection::vec((0usize..3, long_name(), 0u8..4, any::<u32>()), 200..900),
        sec in -(1i64 << 31)..(1i64 << 33),
    ) {
        let mut b = Builder::new();
        let dirs: Vec<NodeId> = (0..3).map(|i| b.dir(Tree::ROOT, format!("dir{i}").as_bytes(), meta(0o755))).collect();
        let mut first_file = None;
        for (d, name, kind, x) in &entries {
            let mut m = meta(0o644 | (x & 0o7000));
            m.mtime = Timestamp { sec: sec + i64::from(*x % 1000), nsec: x % 1_000_000_000 };
            m.uid = x >> 8;
            let dir = dirs[*d];
            match kind {
                0 => {
                    let data = x.to_le_bytes().repeat((*x % 3000) as usize);
                    let id = b.file(dir, name, m, 0, &data);
                    first_file.get_or_insert(id);
                }
                1 => {
                    b.add(dir, name, m, NodeKind::Symlink { target: name.repeat(1 + (*x % 3) as usize) });
                }
                2 => {
                    b.dir(dir, name, m);
                }
                _ => match first_file {
                    Some(f) => b.link(dir, name, f),
                    None => {
                        b.add(dir, name, m, NodeKind::Fifo);
                    }
                },
            }
        }
        ext4_support::check_image(&b, &test_opts());
    }
}
