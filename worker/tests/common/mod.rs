//! Helpers shared by the worker's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use std::sync::Arc;

use bytes::Bytes;
use chunk_core::{ChunkName, Salt};
use worker::{ChunkTable, MemorySource, TierId};

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

/// Chunks and seals an image (all-zero chunks become holes) into an
/// in-memory store ("store", untrusted): the table and the source.
pub fn sealed_source(data: &[u8]) -> (ChunkTable, Arc<MemorySource>) {
    let source = Arc::new(MemorySource::new(TierId::untrusted("store")));
    let table = source
        .insert_image(data, CHUNK, &Salt::new(1, [7; 32]))
        .expect("seal");
    (table, source)
}

/// [`sealed_source`], with the (name, ciphertext) pairs a store would hold.
pub fn seal(data: &[u8]) -> (ChunkTable, Vec<(ChunkName, Bytes)>) {
    let (table, source) = sealed_source(data);
    let stored = table
        .chunks
        .iter()
        .flatten()
        .map(|r| (r.name, source.get(&r.name).expect("stored")))
        .collect();
    (table, stored)
}

/// A runtime with two worker threads, for images served to FUSE or NBD.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
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
