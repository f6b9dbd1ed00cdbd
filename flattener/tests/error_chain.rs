//! Every error a flatten can easily produce says what failed in its own
//! message and leaves the cause to `source()`: no message repeats (ends
//! with) its source's message, so a printed chain (`anyhow`'s `{:#}`)
//! names each cause once.

mod common;

use std::error::Error as StdError;
use std::path::Path;

use common::{Comp, E, compress, oci_layout, tar};
use flattener::{FlattenOptions, ImageRef, flatten};

/// Walks the chain of `e`: no message ends with the message of its source.
/// Returns the chain's depth.
fn check_chain(what: &str, e: &dyn StdError) -> usize {
    let mut depth = 1;
    let mut cur = e;
    while let Some(src) = cur.source() {
        let (outer, inner) = (cur.to_string(), src.to_string());
        assert!(
            !inner.is_empty() && !outer.ends_with(&inner),
            "{what}: message {outer:?} repeats its source {inner:?}"
        );
        depth += 1;
        cur = src;
    }
    depth
}

/// Flattens `reference` into `dir/out.ext4`; it must fail.
fn flatten_err(dir: &Path, reference: &str) -> flattener::Error {
    let r = ImageRef::parse(reference).unwrap();
    flatten(&r, &FlattenOptions::default(), &dir.join("out.ext4")).unwrap_err()
}

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(&digest[7..])
}

fn layer_digest(layout: &Path) -> String {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = idx["manifests"][0]["digest"].as_str().unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(layout, m)).unwrap()).unwrap();
    m["layers"][0]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn no_error_message_repeats_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cases: Vec<(&str, flattener::Error)> = Vec::new();

    // Error::Io: no layout there.
    cases.push((
        "missing layout",
        flatten_err(d, &format!("oci:{}:t", d.join("nope").display())),
    ));

    // Error::Json: index.json is not JSON.
    let bad_json = d.join("bad-json");
    std::fs::create_dir_all(&bad_json).unwrap();
    std::fs::write(bad_json.join("index.json"), b"{not json").unwrap();
    cases.push((
        "malformed index",
        flatten_err(d, &format!("oci:{}", bad_json.display())),
    ));

    // Error::Layer(Decompress): a gzip layer whose deflate data is garbage
    // (the descriptor's digest and size fit the garbage).
    let t = tar(&[E::file("a", &[7u8; 9000])]);
    let mut raw = compress(&t, Comp::Gzip);
    for b in &mut raw[12..40] {
        *b ^= 0x5a;
    }
    let gz2 = d.join("gz");
    common::raw_layout(
        &gz2,
        &[(raw, "application/vnd.oci.image.layer.v1.tar+gzip", t)],
    );
    cases.push((
        "corrupt gzip",
        flatten_err(d, &format!("oci:{}", gz2.display())),
    ));

    // Error::Layer(Io): the blob is a directory.
    let dir_blob = d.join("dir-blob");
    oci_layout(
        &dir_blob,
        &[("t", vec![(tar(&[E::file("a", b"x")]), Comp::None)])],
    );
    let p = blob(&dir_blob, &layer_digest(&dir_blob));
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    cases.push((
        "unreadable blob",
        flatten_err(d, &format!("oci:{}:t", dir_blob.display())),
    ));

    // Error::Layer(Entry): a hard link to nothing.
    let link = d.join("link");
    oci_layout(
        &link,
        &[("t", vec![(tar(&[E::hardlink("l", "nope")]), Comp::Gzip)])],
    );
    cases.push((
        "bad entry",
        flatten_err(d, &format!("oci:{}:t", link.display())),
    ));

    // Error::Io on the output: its directory does not exist.
    let ok = d.join("ok");
    oci_layout(
        &ok,
        &[("t", vec![(tar(&[E::file("a", b"x")]), Comp::Gzip)])],
    );
    let r = ImageRef::parse(&format!("oci:{}:t", ok.display())).unwrap();
    cases.push((
        "output in a missing directory",
        flatten(
            &r,
            &FlattenOptions::default(),
            &d.join("no/such/dir/out.ext4"),
        )
        .unwrap_err(),
    ));

    let mut deep = 0;
    for (what, e) in &cases {
        let depth = check_chain(what, e);
        assert!(depth >= 2, "{what}: {e:?} has no source");
        deep = deep.max(depth);
        // The chain, as the cli prints it, still names the cause.
        eprintln!("{what}: {}", common::chain(e));
    }
    // Layer errors reach the decoder's or the OS's error.
    assert!(deep >= 3, "no chain deeper than 2");
}
