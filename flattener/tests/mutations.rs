//! What the `flatten_layer` fuzz target checks, on mutated valid layers:
//! never a panic, and where flattening succeeds, identical bytes twice.

mod common;

use common::{E, TarBuilder, tar};
use flattener::oci::MemorySource;
use flattener::{FlattenOptions, build_tree, write_flattened};
use proptest::prelude::*;

fn flatten(data: &[u8]) -> Option<Vec<u8>> {
    let source = MemorySource::from_tars(vec![data.to_vec()]);
    let opts = FlattenOptions::default();
    let dir = tempfile::tempdir().unwrap();
    let f = build_tree(&source, &opts, dir.path()).ok()?;
    if f.tree.files.iter().map(|x| x.size).sum::<u64>() > 1 << 30 {
        return None;
    }
    let mut out = Vec::new();
    write_flattened(&f, opts.deleted_data, &mut out).ok()?;
    Some(out)
}

fn seed_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    for e in [
        E::dir("d"),
        E::file("d/f", b"hello world"),
        E::file(&"x".repeat(150), b"pax long name")
            .mtime(-5, 7)
            .xattr("user.a", b"b"),
        E::file(&format!("g/{}", "y".repeat(120)), b"gnu long").gnu(),
        E::symlink("s", "d/f"),
        E::hardlink("h", "d/f"),
        E::dev("c", b'3', 1, 3),
        E::whiteout("d/.wh.gone"),
        E::whiteout("d/.wh..wh..opq"),
    ] {
        t.add(&e);
    }
    t.old_gnu_sparse("sp", 1 << 20, &[(4096, vec![1; 100]), (8192, vec![2; 10])]);
    t.pax_sparse("1.0", "sp1", 1 << 20, &[(0, vec![3; 600])]);
    t.pax_sparse("0.1", "sp2", 1 << 16, &[(512, vec![4; 5])]);
    t.finish()
}

#[test]
fn seed_layer_flattens_and_is_stable() {
    let a = flatten(&seed_layer()).expect("seed layer flattens");
    assert_eq!(Some(a), flatten(&seed_layer()));
    assert!(flatten(&tar(&[])).is_some());
    assert!(flatten(b"").is_some(), "an empty stream is an empty layer");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_layers_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut data = seed_layer();
        for (i, b) in flips {
            let i = i.index(data.len());
            data[i] = b;
        }
        if let Some(c) = cut {
            data.truncate(c.index(data.len()));
        }
        if let Some(first) = flatten(&data) {
            prop_assert_eq!(Some(first), flatten(&data));
        }
    }

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Some(first) = flatten(&data) {
            prop_assert_eq!(Some(first), flatten(&data));
        }
    }
}
