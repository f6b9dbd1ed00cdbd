//! Arbitrary bytes as one tar layer: flattening never panics, and where it
//! succeeds, doing it twice gives identical image bytes.
#![no_main]

use flattener::oci::MemorySource;
use flattener::{FlattenOptions, build_tree, write_flattened};
use libfuzzer_sys::fuzz_target;

fn flatten(data: &[u8]) -> Option<Vec<u8>> {
    let source = MemorySource::from_tars(vec![data.to_vec()]);
    let opts = FlattenOptions::default();
    let f = build_tree(&source, &opts, &std::env::temp_dir()).ok()?;
    // Huge sparse files are legal but make slow fuzz cases; skip writing them.
    if f.tree.files.iter().map(|x| x.size).sum::<u64>() > 1 << 30 {
        return None;
    }
    let mut out = Vec::new();
    write_flattened(&f, opts.deleted_data, &mut out).ok()?;
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    if let Some(first) = flatten(data) {
        let second = flatten(data).expect("second flatten of the same bytes failed");
        assert!(first == second, "two flattens of the same layer differ");
    }
});
