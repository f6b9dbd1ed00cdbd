//! Helpers shared by the worker's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use chunk_core::ChunkName;
use worker::ChunkTable;

/// Chunk size of the test images.
pub const CHUNK: u32 = 512 * 1024;

/// Reports a missing tool or privilege: a skip (true), or a panic under
/// `LODE_REQUIRE_SERVERS=1` (CI installs everything).
pub fn skip(why: &str) -> bool {
    if std::env::var("LODE_REQUIRE_SERVERS").as_deref() == Ok("1") {
        panic!("required environment missing: {why}");
    }
    eprintln!("skipped: {why}");
    true
}

/// Chunks and seals an image (all-zero chunks become holes): the table and
/// the (name, ciphertext) pairs a store would hold.
pub fn seal(data: &[u8]) -> (ChunkTable, Vec<(ChunkName, Vec<u8>)>) {
    let mut stored = Vec::new();
    let chunks = data
        .chunks(CHUNK as usize)
        .map(|c| {
            if c.iter().all(|&b| b == 0) {
                return None;
            }
            let sealed = chunk_core::seal(
                &chunk_core::RustCrypto,
                &chunk_core::Salt::new(1, [7; 32]),
                c,
            )
            .expect("seal");
            let (r, ct) = (sealed.chunk_ref(), sealed.ciphertext);
            stored.push((r.name, ct));
            Some(r)
        })
        .collect();
    let table = ChunkTable {
        image_size: data.len() as u64,
        chunk_size: CHUNK,
        chunks,
    };
    (table, stored)
}

/// Writes `files` (relative path → content) under `dir/root`, lets `extra`
/// add to that tree (links, ...), and builds a 32 MiB ext4 image of it with
/// `mke2fs -d`: the image's bytes.
pub fn build_ext4_with(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    extra: impl FnOnce(&Path),
) -> Vec<u8> {
    let root = dir.join("root");
    for (p, data) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    extra(&root);
    let img = dir.join("fs.ext4");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
        .args(["-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("32M")
        .output()
        .expect("run mke2fs");
    assert!(
        out.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(img).unwrap()
}
