//! End-to-end checks of the ext4 writer: e2fsck -fn must be silent and the
//! kernel's ext4 driver must show exactly the tree that was written.

mod ext4_support;

use ext4_support::{Builder, check_image, meta, test_opts};
use flattener::tree::{NodeKind, Timestamp, Tree};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

#[test]
fn basic_tree_mounts_and_matches() {
    let mut b = Builder::new();
    let root = Tree::ROOT;
    let etc = b.dir(root, b"etc", meta(0o755));
    b.file(etc, b"hostname", meta(0o644), 0, b"lode\n");
    b.file(etc, b"empty", meta(0o600), 0, b"");
    b.file(
        root,
        b"exact-3-blocks",
        meta(0o644),
        0,
        &pattern(3 * 4096, 1),
    );
    b.file(
        root,
        b"partial-tail",
        meta(0o644),
        0,
        &pattern(3 * 4096 + 17, 2),
    );
    b.file(root, b"big", meta(0o755), 0, &pattern(3 << 20, 3));
    let usr = b.dir(root, b"usr", meta(0o755));
    let bin = b.dir(usr, b"bin", meta(0o755));
    b.add(
        bin,
        b"sh",
        meta(0o777),
        NodeKind::Symlink {
            target: b"dash".to_vec(),
        },
    );
    b.add(
        bin,
        b"long",
        meta(0o777),
        NodeKind::Symlink {
            target: vec![b'x'; 59],
        },
    );
    b.add(
        bin,
        b"longer",
        meta(0o777),
        NodeKind::Symlink {
            target: vec![b'y'; 60],
        },
    );
    let mut deep = b"/a".to_vec();
    deep.extend(std::iter::repeat_n(b"/component".as_slice(), 500).flatten());
    b.add(
        bin,
        b"very-long",
        meta(0o777),
        NodeKind::Symlink {
            target: deep[..4095].to_vec(),
        },
    );
    b.dir(usr, b"empty-dir", meta(0o700));
    let (_dir, _image, summary) = check_image(&b, &test_opts());
    assert_eq!(summary.data_regions.len(), 1);
    assert_eq!(summary.data_regions[0].start, 512 * 1024);
}

#[test]
fn special_files_modes_owners_times_and_xattrs() {
    let mut b = Builder::new();
    let root = Tree::ROOT;
    let mut m = meta(0o4755);
    m.uid = 70000;
    m.gid = 123_456;
    m.mtime = Timestamp {
        sec: -1_000_000_000,
        nsec: 999_999_999,
    };
    b.file(root, b"setuid-old", m, 0, b"x");
    let mut m = meta(0o2710);
    m.mtime = Timestamp {
        sec: 5_000_000_000,
        nsec: 1,
    };
    b.file(root, b"setgid-future", m, 0, b"y");
    let mut m = meta(0o1777);
    m.mtime = Timestamp {
        sec: (1 << 31) - 1,
        nsec: 500,
    };
    let tmp = b.dir(root, b"tmp", m);
    let mut m = meta(0o644);
    m.mtime = Timestamp {
        sec: 1 << 31,
        nsec: 0,
    };
    b.add(tmp, b"chr", m, NodeKind::CharDevice { major: 1, minor: 3 });
    b.add(
        tmp,
        b"chr-big",
        meta(0o600),
        NodeKind::CharDevice {
            major: 4095,
            minor: (1 << 20) - 1,
        },
    );
    b.add(
        tmp,
        b"blk",
        meta(0o660),
        NodeKind::BlockDevice {
            major: 259,
            minor: 70000,
        },
    );
    b.add(
        tmp,
        b"blk-zero",
        meta(0o660),
        NodeKind::BlockDevice { major: 0, minor: 0 },
    );
    b.add(tmp, b"fifo", meta(0o644), NodeKind::Fifo);
    b.add(tmp, b"sock", meta(0o755), NodeKind::Socket);
    // xattrs: small ones inline, large ones in a block, one block shared.
    let mut small = meta(0o755);
    small.xattrs.insert(
        b"security.capability".to_vec(),
        vec![
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    b.file(root, b"ping", small, 0, b"elf");
    let mut large = meta(0o644);
    large.xattrs.insert(b"user.big".to_vec(), vec![7u8; 1000]);
    large.xattrs.insert(b"trusted.t".to_vec(), b"v".to_vec());
    large.xattrs.insert(b"user.empty".to_vec(), Vec::new());
    b.file(root, b"large-xattrs-1", large.clone(), 0, b"1");
    b.file(root, b"large-xattrs-2", large.clone(), 0, b"2");
    let mut dirx = meta(0o755);
    dirx.xattrs
        .insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
    b.dir(root, b"opaque", dirx);
    let mut linkx = meta(0o777);
    linkx.xattrs.insert(b"trusted.sym".to_vec(), b"1".to_vec());
    b.add(
        root,
        b"link-with-xattr",
        linkx,
        NodeKind::Symlink {
            target: b"ping".to_vec(),
        },
    );
    // POSIX ACLs (xattr format: version 2, ids -1 on unnamed entries).
    let acl = |entries: &[(u16, u16, u32)]| {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    };
    let none = u32::MAX;
    let mut acl_file = meta(0o640);
    acl_file.xattrs.insert(
        b"system.posix_acl_access".to_vec(),
        acl(&[
            (1, 6, none),
            (2, 4, 1000),
            (4, 4, none),
            (8, 4, 50),
            (0x10, 4, none),
            (0x20, 0, none),
        ]),
    );
    b.file(root, b"with-acl", acl_file, 0, b"acl");
    let mut acl_dir = meta(0o750);
    let dflt = acl(&[(1, 7, none), (4, 5, none), (0x20, 0, none)]);
    acl_dir
        .xattrs
        .insert(b"system.posix_acl_default".to_vec(), dflt);
    acl_dir
        .xattrs
        .insert(b"user.note".to_vec(), b"inherits".to_vec());
    b.dir(root, b"acl-dir", acl_dir);
    // Root metadata too.
    b.tree.node_mut(root).meta.mode = 0o700;
    b.tree.node_mut(root).meta.uid = 1;
    b.tree.node_mut(root).meta.mtime = Timestamp {
        sec: 12345,
        nsec: 6789,
    };
    check_image(&b, &test_opts());
}

#[test]
fn hard_links_and_non_utf8_names() {
    let mut b = Builder::new();
    let root = Tree::ROOT;
    let a = b.dir(root, b"a", meta(0o755));
    let c = b.dir(root, b"c", meta(0o755));
    let f = b.file(a, b"original", meta(0o644), 0, b"shared contents");
    b.link(c, b"link1", f);
    b.link(c, b"link2", f);
    b.link(root, b"\xff\xfe-not-utf8", f);
    b.file(root, &[b'n'; 255], meta(0o644), 0, b"long name");
    b.add(
        c,
        b"\x01\x7f weird name \xc3\x28",
        meta(0o644),
        NodeKind::Fifo,
    );
    check_image(&b, &test_opts());
}

#[test]
fn deep_paths() {
    let mut b = Builder::new();
    let mut d = Tree::ROOT;
    for i in 0..500 {
        d = b.dir(d, format!("d{i:03}").as_bytes(), meta(0o755));
    }
    b.file(d, b"bottom", meta(0o644), 0, b"deep");
    check_image(&b, &test_opts());
}

#[test]
fn hashed_directory_with_default_options() {
    // An all-zero hash seed makes ext4 use its built-in default seed.
    let mut b = Builder::new();
    let d = b.dir(Tree::ROOT, b"d", meta(0o755));
    for i in 0..2000 {
        b.file(
            d,
            format!("file-{i}-\u{e9}").as_bytes(),
            meta(0o644),
            0,
            b"",
        );
    }
    check_image(&b, &flattener::ext4::Ext4Options::default());
}
