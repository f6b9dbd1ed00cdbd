//! Scale checks of the ext4 writer: huge directories, files over 4 GiB,
//! deep extent trees, extents over 32768 blocks.

mod ext4_support;

use std::time::Instant;

use ext4_support::{Builder, check_image, meta, test_opts};
use flattener::tree::{NodeKind, Tree};

#[test]
fn directory_with_100000_entries() {
    let mut b = Builder::new();
    let big = b.dir(Tree::ROOT, b"big", meta(0o755));
    let shared = b.file(Tree::ROOT, b"target", meta(0o644), 0, b"t");
    for i in 0..100_000u32 {
        let mut name = format!("entry-{i:06}-{}", "x".repeat((i % 40) as usize)).into_bytes();
        if i % 7 == 0 {
            // Bytes over 0x7f hash differently with signed and unsigned chars.
            name.extend_from_slice(b"\xe9\xff");
        }
        let name = name.as_slice();
        match i % 4 {
            0 => {
                b.file(big, name, meta(0o644), 0, &i.to_le_bytes());
            }
            1 => {
                b.add(
                    big,
                    name,
                    meta(0o777),
                    NodeKind::Symlink {
                        target: name.to_vec(),
                    },
                );
            }
            2 => {
                b.dir(big, name, meta(0o755));
            }
            _ => {
                b.add(big, name, meta(0o600), NodeKind::Fifo);
            }
        }
        if i % 10_000 == 0 {
            b.link(big, format!("hardlink-{i}").as_bytes(), shared);
        }
    }
    let start = Instant::now();
    let bytes = b.write_vec(&test_opts());
    println!(
        "100k-entry tree: {} bytes written in {:?}",
        bytes.len(),
        start.elapsed()
    );
    // 25,000 subdirectories: the parent's link count is 25,002.
    check_image(&b, &test_opts());
}

#[test]
fn directory_with_more_subdirectories_than_link_max() {
    let mut b = Builder::new();
    let big = b.dir(Tree::ROOT, b"many", meta(0o755));
    for i in 0..65_100u32 {
        b.dir(big, format!("{i}").as_bytes(), meta(0o755));
    }
    check_image(&b, &test_opts());
}

#[test]
fn sparse_file_over_4_gib_and_deep_extent_trees() {
    let mut b = Builder::new();
    let gib = 1u64 << 30;
    // 5 GiB with data at the start, across the 4 GiB line and at the end.
    let f = b.synthetic_contents(
        0,
        5 * gib,
        &[(0, 10_000), (4 * gib - 5000, 10_000), (5 * gib - 3, 3)],
    );
    b.add(
        Tree::ROOT,
        b"five-gib",
        meta(0o644),
        NodeKind::Regular { file: f },
    );
    // 2000 one-block extents: leaves beyond what 4 index entries hold (depth 2).
    let runs: Vec<(u64, u64)> = (0..2000u64).map(|i| (i * 3 * 4096 + 7, 100)).collect();
    let f = b.synthetic_contents(0, 2000 * 3 * 4096, &runs);
    b.add(
        Tree::ROOT,
        b"many-extents",
        meta(0o644),
        NodeKind::Regular { file: f },
    );
    // 6 extents: one leaf block (depth 1).
    let runs: Vec<(u64, u64)> = (0..6u64).map(|i| (i * 2 * 4096, 4096)).collect();
    let f = b.synthetic_contents(0, 12 * 4096 + 1, &runs);
    b.add(
        Tree::ROOT,
        b"six-extents",
        meta(0o644),
        NodeKind::Regular { file: f },
    );
    // 40000 contiguous blocks: two extents (an extent covers at most 32768).
    let f = b.synthetic_contents(1, 40_000 * 4096 - 1, &[(0, 40_000 * 4096 - 1)]);
    b.add(
        Tree::ROOT,
        b"long-run",
        meta(0o644),
        NodeKind::Regular { file: f },
    );
    let (_dir, _image, summary) = check_image(&b, &test_opts());
    // Holes are not allocated: the image is far smaller than the file.
    assert!(
        summary.size_bytes < gib,
        "image of {} bytes",
        summary.size_bytes
    );
}
