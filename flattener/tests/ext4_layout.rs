//! The dedup-friendly layout: a base layer's data region is byte-identical
//! whatever layers sit on top, metadata lives after the last data region,
//! deleted data keeps its place.

mod ext4_support;

use ext4_support::{Builder, check_image, meta, test_opts};
use flattener::ext4::{DeletedData, ImageSummary};
use flattener::tree::{NodeId, NodeKind, Tree};

const CHUNK: u64 = 512 * 1024;

fn bytes(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 ^ seed as u8)
        .collect()
}

/// The same base layer, node for node: returns (usr dir, deleted-later file name).
fn base(b: &mut Builder) -> NodeId {
    let usr = b.dir(Tree::ROOT, b"usr", meta(0o755));
    b.file(usr, b"a", meta(0o644), 0, &bytes(100_000, 1));
    b.file(usr, b"b", meta(0o644), 0, &bytes(3 * 4096, 2));
    let sparse = b.contents(
        0,
        1 << 24,
        &[(0, &bytes(5000, 3)), (1 << 23, &bytes(9000, 4))],
    );
    b.add(
        usr,
        b"sparse",
        meta(0o644),
        NodeKind::Regular { file: sparse },
    );
    b.file(usr, b"doomed", meta(0o644), 0, &bytes(600_000, 5));
    b.file(usr, b"c", meta(0o600), 0, &bytes(1, 6));
    usr
}

fn region<'a>(image: &'a [u8], s: &ImageSummary, layer: usize) -> &'a [u8] {
    let r = &s.data_regions[layer];
    assert_eq!(r.start % CHUNK, 0, "region {layer} is not chunk aligned");
    // Whole chunks, the zero padding up to the next boundary included.
    &image[r.start as usize..(r.start + r.len).next_multiple_of(CHUNK) as usize]
}

fn write(b: &Builder, deleted: DeletedData) -> (Vec<u8>, ImageSummary) {
    let mut opts = test_opts();
    opts.deleted_data = deleted;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i");
    let s = b.write(&opts, &path);
    (std::fs::read(path).unwrap(), s)
}

#[test]
fn base_region_is_identical_under_different_upper_layers() {
    // Image A: the base alone plus one small upper layer.
    let mut a = Builder::new();
    let usr = base(&mut a);
    a.file(usr, b"upper-a", meta(0o644), 1, b"only in A");
    // Image B: the base, an upper layer deleting and replacing base files, and a third layer.
    let mut b = Builder::new();
    let usr_b = base(&mut b);
    b.unlink(usr_b, b"doomed");
    b.file(usr_b, b"a", meta(0o755), 1, &bytes(70_000, 9)); // replaces base "a"
    b.file(Tree::ROOT, b"upper-b", meta(0o644), 1, &bytes(2 << 20, 7));
    b.file(Tree::ROOT, b"top", meta(0o644), 2, b"third layer");
    for (name, deleted) in [("keep", DeletedData::Keep), ("zero", DeletedData::Zero)] {
        let (ia, sa) = write(&a, deleted);
        let (ib, sb) = write(&b, deleted);
        assert_eq!(sa.data_regions[0], sb.data_regions[0], "{name}");
        let (ra, rb) = (region(&ia, &sa, 0), region(&ib, &sb, 0));
        match deleted {
            DeletedData::Keep => assert!(ra == rb, "{name}: base regions differ"),
            _ => {
                // Only the deleted/replaced files' blocks differ, and they are zeros in B.
                let differing: Vec<usize> = (0..ra.len() / 4096)
                    .filter(|i| ra[i * 4096..(i + 1) * 4096] != rb[i * 4096..(i + 1) * 4096])
                    .collect();
                assert!(!differing.is_empty());
                // "a" (25 blocks) and "doomed" (147 blocks) were dropped.
                assert_eq!(differing.len(), 25 + 147, "{name}");
                for i in differing {
                    assert!(rb[i * 4096..(i + 1) * 4096].iter().all(|&x| x == 0));
                }
            }
        }
        for (img, s) in [(&ia, &sa), (&ib, &sb)] {
            let last = s.data_regions.last().unwrap();
            assert!(s.metadata_start >= last.start + last.len);
            assert_eq!(s.metadata_start % CHUNK, 0);
            assert_eq!(s.size_bytes % CHUNK, 0);
            assert_eq!(img.len() as u64, s.size_bytes);
            // Nothing but the superblock and descriptors in the first chunk.
            assert!(img[64 * 1024..CHUNK as usize].iter().all(|&x| x == 0));
            for w in s.data_regions.windows(2) {
                assert!(w[1].start >= w[0].start + w[0].len && w[1].start % CHUNK == 0);
            }
        }
    }
    for deleted in [DeletedData::Keep, DeletedData::Zero] {
        let mut opts = test_opts();
        opts.deleted_data = deleted;
        check_image(&b, &opts);
    }
}

#[test]
fn file_data_sits_where_the_summary_says() {
    let mut b = Builder::new();
    b.file(Tree::ROOT, b"one", meta(0o644), 0, b"first layer file");
    b.file(Tree::ROOT, b"two", meta(0o644), 1, b"second layer file");
    let (img, s) = write(&b, DeletedData::Zero);
    assert_eq!(s.data_regions.len(), 2);
    let r0 = s.data_regions[0];
    let r1 = s.data_regions[1];
    assert_eq!((r0.layer, r0.start, r0.len), (0, CHUNK, 4096));
    assert_eq!((r1.layer, r1.start, r1.len), (1, 2 * CHUNK, 4096));
    assert_eq!(
        &img[CHUNK as usize..CHUNK as usize + 16],
        b"first layer file"
    );
    assert_eq!(
        &img[2 * CHUNK as usize..2 * CHUNK as usize + 17],
        b"second layer file"
    );
    assert_eq!(s.metadata_start, 3 * CHUNK);
}
