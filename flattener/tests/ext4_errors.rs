//! Bad trees and failing I/O give clear errors, never panics.

mod ext4_support;

use std::io::{self, Cursor, Seek, SeekFrom, Write};

use ext4_support::{Builder, meta, test_opts};
use flattener::ext4::{Ext4Options, WriteError, write_image};
use flattener::tree::{DataExtent, FileId, NodeId, NodeKind, Spool, Tree};

fn err(b: &Builder) -> WriteError {
    write_image(&b.tree, &b.spool, &test_opts(), Cursor::new(Vec::new())).expect_err("must fail")
}

fn assert_tree_error(b: &Builder, path_part: &str, reason_part: &str) {
    match err(b) {
        WriteError::InvalidTree { path, reason } | WriteError::Unrepresentable { path, reason } => {
            assert!(
                path.contains(path_part),
                "path {path:?} should contain {path_part:?}"
            );
            assert!(
                reason.contains(reason_part),
                "reason {reason:?} should contain {reason_part:?}"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn bad_names_are_rejected() {
    for (name, reason) in [
        (&b""[..], "1 to 255"),
        (&[b'x'; 256][..], "1 to 255"),
        (b"a/b", "'/'"),
        (b"a\0b", "NUL"),
        (b".", "'.'"),
        (b"..", "'..'"),
    ] {
        let mut b = Builder::new();
        let d = b.dir(Tree::ROOT, b"dir", meta(0o755));
        b.file(d, name, meta(0o644), 0, b"x");
        assert_tree_error(&b, "/dir/", reason);
    }
}

#[test]
fn structural_errors_are_rejected() {
    // Dangling node id.
    let mut b = Builder::new();
    b.link(Tree::ROOT, b"ghost", NodeId(99));
    assert_tree_error(&b, "/ghost", "missing node 99");
    // A cycle: a directory containing the root.
    let mut b = Builder::new();
    let d = b.dir(Tree::ROOT, b"d", meta(0o755));
    b.link(d, b"up", Tree::ROOT);
    assert_tree_error(&b, "/d/up", "linked twice");
    // A directory hard link.
    let mut b = Builder::new();
    let d = b.dir(Tree::ROOT, b"d", meta(0o755));
    b.link(Tree::ROOT, b"e", d);
    assert_tree_error(&b, "/e", "linked twice");
    // Root that is not a directory.
    let mut b = Builder::new();
    b.tree.node_mut(Tree::ROOT).kind = NodeKind::Fifo;
    assert_tree_error(&b, "/", "root");
    // Two nodes sharing one file's contents.
    let mut b = Builder::new();
    let f = b.contents(0, 1, &[(0, b"x")]);
    b.add(Tree::ROOT, b"a", meta(0o644), NodeKind::Regular { file: f });
    b.add(Tree::ROOT, b"b", meta(0o644), NodeKind::Regular { file: f });
    assert_tree_error(&b, "/b", "two nodes");
    // A missing file id.
    let mut b = Builder::new();
    b.add(
        Tree::ROOT,
        b"a",
        meta(0o644),
        NodeKind::Regular { file: FileId(7) },
    );
    assert_tree_error(&b, "/a", "missing file 7");
}

#[test]
fn unrepresentable_nodes_are_rejected() {
    let cases: Vec<(NodeKind, &str)> = vec![
        (NodeKind::Symlink { target: Vec::new() }, "empty"),
        (
            NodeKind::Symlink {
                target: b"a\0b".to_vec(),
            },
            "NUL",
        ),
        (
            NodeKind::Symlink {
                target: vec![b'a'; 4096],
            },
            "4095",
        ),
        (
            NodeKind::CharDevice {
                major: 4096,
                minor: 0,
            },
            "12-bit",
        ),
        (
            NodeKind::BlockDevice {
                major: 0,
                minor: 1 << 20,
            },
            "20-bit",
        ),
    ];
    for (kind, reason) in cases {
        let mut b = Builder::new();
        b.add(Tree::ROOT, b"n", meta(0o644), kind);
        assert_tree_error(&b, "/n", reason);
    }
    let mut m = meta(0o644);
    m.xattrs
        .insert(b"system.sockprotoname".to_vec(), vec![2, 0, 0, 0]);
    let mut b = Builder::new();
    b.file(Tree::ROOT, b"sys", m, 0, b"");
    assert_tree_error(&b, "/sys", "only user.*");
    let mut m = meta(0o644);
    let bad_acl = vec![2, 0, 0, 0, 0x40, 0, 7, 0, 0, 0, 0, 0];
    m.xattrs
        .insert(b"system.posix_acl_access".to_vec(), bad_acl);
    let mut b = Builder::new();
    b.file(Tree::ROOT, b"acl", m, 0, b"");
    assert_tree_error(&b, "/acl", "not a valid POSIX ACL");
    let mut m = meta(0o644);
    m.xattrs.insert(b"user.huge".to_vec(), vec![0; 5000]);
    let mut b = Builder::new();
    b.file(Tree::ROOT, b"huge", m, 0, b"");
    assert_tree_error(&b, "/huge", "more than one 4 KiB block");
    // 65001 links to one file.
    let mut b = Builder::new();
    let f = b.file(Tree::ROOT, b"f", meta(0o644), 0, b"x");
    let d = b.dir(Tree::ROOT, b"d", meta(0o755));
    for i in 0..65_000 {
        b.link(d, format!("{i}").as_bytes(), f);
    }
    assert_tree_error(&b, "/d/", "hard links");
}

#[test]
fn bad_file_data_is_rejected() {
    let bad = |f: &mut dyn FnMut(&mut Builder)| {
        let mut b = Builder::new();
        b.file(Tree::ROOT, b"f", meta(0o644), 0, b"0123456789");
        f(&mut b);
        match err(&b) {
            WriteError::InvalidFile { file, reason, .. } => {
                assert_eq!(file, FileId(0));
                reason
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    let r = bad(&mut |b| b.tree.files[0].size = 5);
    assert!(r.contains("exceeds size"), "{r}");
    let r = bad(&mut |b| {
        b.tree.files[0].extents.push(DataExtent {
            file_offset: 5,
            len: 2,
            spool_offset: 0,
        });
    });
    assert!(r.contains("overlaps"), "{r}");
    let r = bad(&mut |b| b.tree.files[0].extents[0].len = 0);
    assert!(r.contains("empty"), "{r}");
    let r = bad(&mut |b| b.tree.layers[0].push(FileId(0)));
    assert!(r.contains("listed twice"), "{r}");
    let r = bad(&mut |b| b.tree.layers[0].clear());
    assert!(r.contains("listed in no layer"), "{r}");
    let r = bad(&mut |b| {
        b.tree.layers.push(vec![FileId(0)]);
        b.tree.layers[0].clear();
    });
    assert!(r.contains("but its data is in layer 0"), "{r}");
    let r = bad(&mut |b| b.tree.files[0].size = u64::MAX);
    assert!(r.contains("limit"), "{r}");
}

#[test]
fn bad_options_are_rejected() {
    let b = Builder::new();
    let mut opts = Ext4Options::default();
    opts.label = vec![b'l'; 17];
    let e = write_image(&b.tree, &b.spool, &opts, Cursor::new(Vec::new())).expect_err("label");
    assert!(matches!(e, WriteError::InvalidOptions { .. }), "{e:?}");
}

struct FailingSpool;
impl Spool for FailingSpool {
    fn read_at(&self, _: u32, _: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other("disk on fire"))
    }
}

/// Accepts `limit` bytes, then fails.
struct FailingWriter {
    written: u64,
    limit: u64,
}
impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(io::Error::other("disk full"));
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Seek for FailingWriter {
    fn seek(&mut self, _: SeekFrom) -> io::Result<u64> {
        Ok(self.written)
    }
}

#[test]
fn io_errors_carry_context_and_source() {
    let mut b = Builder::new();
    let f = b.file(Tree::ROOT, b"f", meta(0o644), 0, b"data");
    let e = write_image(
        &b.tree,
        &FailingSpool,
        &test_opts(),
        Cursor::new(Vec::new()),
    )
    .expect_err("spool");
    match &e {
        WriteError::Spool { layer: 0, node, .. } => assert_eq!(*node, Some(f)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        std::error::Error::source(&e).map(|s| s.to_string()),
        Some("disk on fire".into())
    );
    let e = write_image(
        &b.tree,
        &b.spool,
        &test_opts(),
        FailingWriter {
            written: 0,
            limit: (1 << 20) + 10,
        },
    )
    .expect_err("writer");
    assert!(matches!(e, WriteError::Write { .. }), "{e:?}");
    assert!(std::error::Error::source(&e).is_some());
}
