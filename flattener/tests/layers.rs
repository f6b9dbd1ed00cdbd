//! Layer semantics: images built here, flattened into a tree, compared with
//! what the OCI rules give.

mod common;

use std::collections::BTreeMap;

use common::{Comp, E, TarBuilder, dump, oci_layout, tar};
use flattener::{Error, FlattenOptions, Flattened, ImageRef, LayerError, build_tree};

fn flatten_with(layers: Vec<(Vec<u8>, Comp)>) -> Result<Flattened, Error> {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    oci_layout(&layout, &[("t", layers)]);
    let src = ImageRef::parse(&format!("oci:{}:t", layout.display()))?.open(dir.path())?;
    build_tree(&*src, &FlattenOptions::default(), dir.path())
}

fn flatten(layers: Vec<Vec<u8>>) -> Result<Flattened, Error> {
    flatten_with(layers.into_iter().map(|t| (t, Comp::Gzip)).collect())
}

fn listing(layers: Vec<Vec<u8>>) -> BTreeMap<String, String> {
    let f = flatten(layers).unwrap();
    dump(&f.tree, &f.spool)
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
        .collect()
}

fn kind(l: &BTreeMap<String, String>, p: &str) -> String {
    l.get(p)
        .unwrap_or_else(|| panic!("{p} missing in {l:#?}"))
        .clone()
}

#[test]
fn basic_types_modes_owners_times_xattrs() {
    let l = listing(vec![tar(&[
        E::dir("etc").mode(0o755),
        E::file("etc/passwd", b"root:x:0:0\n").mode(0o644),
        E::file("usr/bin/sudo", b"ELF").mode(0o4755).owner(0, 0),
        E::file("usr/bin/wall", b"ELF").mode(0o2755).owner(0, 5),
        E::dir("tmp").mode(0o1777),
        E::symlink("bin", "usr/bin"),
        E::dev("dev/null", b'3', 1, 3),
        E::dev("dev/sda", b'4', 8, 0),
        E::dev("run/fifo", b'6', 0, 0),
        E::file("old", b"x").mtime(-1, 250_000_000),
        E::file("future", b"y").mtime(4_102_444_800, 123_456_789),
        E::file("big-owner", b"z").owner(100_000_000, 7),
        E::file("cap", b"c")
            .xattr("security.capability", b"\x01\x00\x00\x02")
            .xattr("user.note", b"hi")
            .xattr("trusted.t", b"1")
            .xattr("system.posix_acl_access", &common::acl_xattr())
            .xattr("system.other", b"dropped"),
    ])]);
    assert!(kind(&l, "/etc/passwd").starts_with("file size=11"));
    assert!(kind(&l, "/usr/bin/sudo").contains("mode=4755"));
    assert!(kind(&l, "/usr/bin/wall").contains("mode=2755 0:5"));
    assert!(kind(&l, "/tmp").contains("dir mode=1777"));
    assert!(kind(&l, "/bin").starts_with("symlink usr/bin"));
    assert!(kind(&l, "/dev/null").starts_with("char 1:3"));
    assert!(kind(&l, "/dev/sda").starts_with("block 8:0"));
    assert!(kind(&l, "/run/fifo").starts_with("fifo"));
    assert!(
        kind(&l, "/old").contains("t=-1.250000000"),
        "{}",
        kind(&l, "/old")
    );
    assert!(kind(&l, "/future").contains("t=4102444800.123456789"));
    assert!(kind(&l, "/big-owner").contains("100000000:7"));
    let cap = kind(&l, "/cap");
    assert!(cap.contains("security.capability="), "{cap}");
    assert!(cap.contains("user.note=hi"));
    assert!(cap.contains("trusted.t=1"));
    assert!(cap.contains("system.posix_acl_access="));
    assert!(!cap.contains("system.other"));
    // Implicit parents: 0755, root, epoch.
    assert!(kind(&l, "/usr").contains("dir mode=755 0:0 t=0.000000000"));
    assert_eq!(l.len(), 18, "{l:#?}");
}

#[test]
fn long_and_non_utf8_names() {
    let long_dir = "d".repeat(120);
    let long = format!("{long_dir}/{}", "f".repeat(200));
    let gnu = format!("{}/{}", "g".repeat(150), "h".repeat(130));
    let link_target = format!("/{}", "t".repeat(300));
    let f = flatten(vec![tar(&[
        E::file(&long, b"pax"),
        E::file(&gnu, b"gnu").gnu(),
        E::symlink("longlink", &link_target).gnu(),
        E::symlink("paxlink", &link_target),
        E::file_b(b"caf\xe9-\xff", b"latin1"),
    ])])
    .unwrap();
    let d = dump(&f.tree, &f.spool);
    assert!(d.contains_key(format!("/{long}").as_bytes()));
    assert!(d.contains_key(format!("/{gnu}").as_bytes()));
    assert!(d[&b"/longlink"[..]].starts_with(&format!("symlink {link_target}")));
    assert!(d[&b"/paxlink"[..]].starts_with(&format!("symlink {link_target}")));
    assert!(d.contains_key(&b"/caf\xe9-\xff"[..]));
}

#[test]
fn whiteouts_opaque_and_replacement() {
    let l = listing(vec![
        tar(&[
            E::file("a/keep", b"1"),
            E::file("a/gone", b"2"),
            E::file("b/x", b"3"),
            E::file("b/y", b"4"),
            E::file("f2d", b"file"),
            E::dir("d2f"),
            E::file("d2f/child", b"c"),
            E::dir("opq"),
            E::file("opq/lower", b"l"),
        ]),
        tar(&[
            E::whiteout("a/.wh.gone"),
            E::whiteout("b/.wh..wh..opq"),
            E::file("b/new", b"5"),
            E::file("f2d/inside", b"now a dir"),
            E::dir("f2d"),
            E::file("d2f", b"now a file"),
            E::whiteout(".wh.missing"),
            E::whiteout("nodir/.wh.x"),
            E::whiteout("opq/.wh..wh..opq"),
            E::dir("opq"),
        ]),
    ]);
    assert!(l.contains_key("/a/keep"));
    assert!(!l.contains_key("/a/gone"));
    assert!(!l.contains_key("/b/x") && !l.contains_key("/b/y"));
    assert!(l.contains_key("/b/new"));
    assert!(kind(&l, "/f2d").starts_with("dir"));
    assert!(l.contains_key("/f2d/inside"));
    assert!(kind(&l, "/d2f").starts_with("file size=10"));
    assert!(!l.contains_key("/d2f/child"));
    assert!(!l.contains_key("/opq/lower"));
    assert!(!l.contains_key("/nodir"));
    assert!(!l.keys().any(|k| k.contains(".wh.")));
}

#[test]
fn file_to_dir_and_back_across_three_layers() {
    let l = listing(vec![
        tar(&[E::file("x", b"v1")]),
        tar(&[E::dir("x"), E::file("x/y", b"v2")]),
        tar(&[E::file("x", b"v3")]),
    ]);
    assert!(kind(&l, "/x").starts_with("file size=2"));
    assert!(!l.contains_key("/x/y"));
}

#[test]
fn hard_links_share_nodes_and_keep_old_inode_when_replaced() {
    let f = flatten(vec![
        tar(&[
            E::file("bin/perl", b"perl binary"),
            E::hardlink("bin/perl5.36", "bin/perl"),
            E::hardlink("bin/a-link-first", "bin/z-target"),
            E::file("bin/z-target", b"zz"),
            E::hardlink("chain1", "chain2"),
            E::hardlink("chain2", "bin/perl"),
        ]),
        tar(&[
            E::file("bin/perl", b"new perl"),
            E::hardlink("up", "bin/perl5.36"),
        ]),
    ])
    .unwrap();
    let d = dump(&f.tree, &f.spool);
    let node = |p: &str| d[p.as_bytes()].split("node=").nth(1).unwrap().to_string();
    let content = |p: &str| d[p.as_bytes()].split(" mode").next().unwrap().to_string();
    assert_ne!(node("/bin/perl"), node("/bin/perl5.36"));
    assert_eq!(node("/bin/perl5.36"), node("/up"));
    assert_eq!(node("/bin/perl5.36"), node("/chain1"));
    assert_eq!(node("/chain1"), node("/chain2"));
    assert_eq!(node("/bin/a-link-first"), node("/bin/z-target"));
    assert!(content("/bin/perl").starts_with("file size=8"));
    assert!(content("/bin/perl5.36").starts_with("file size=11"));
}

#[test]
fn paths_are_normalized_and_cannot_escape() {
    let l = listing(vec![tar(&[
        E::file("../../etc/x", b"1"),
        E::file("/abs/y", b"2"),
        E::file("./a/../b/./c", b"3"),
        E::file("a/../../../../z", b"4"),
        E::dir("./"),
    ])]);
    assert!(l.contains_key("/etc/x"));
    assert!(l.contains_key("/abs/y"));
    assert!(l.contains_key("/b/c"));
    assert!(l.contains_key("/z"));
    assert!(!l.contains_key("/a"));
}

#[test]
fn symlinked_parents_resolve_inside_the_root() {
    let l = listing(vec![
        tar(&[
            E::dir("usr/lib"),
            E::symlink("lib", "usr/lib"),
            E::symlink("evil", "../../../../outside"),
            E::symlink("abs", "/usr"),
            E::symlink("loop", "loop"),
        ]),
        tar(&[
            E::file("lib/libc.so", b"c"),
            E::file("evil/f", b"e"),
            E::file("abs/share/g", b"g"),
        ]),
        tar(&[E::file("lib", b"replaces the symlink itself")]),
    ]);
    assert!(l.contains_key("/usr/lib/libc.so"));
    assert!(l.contains_key("/outside/f"));
    assert!(l.contains_key("/usr/share/g"));
    assert!(kind(&l, "/lib").starts_with("file"));
    let err = flatten(vec![tar(&[
        E::symlink("loop", "loop"),
        E::file("loop/x", b""),
    ])])
    .unwrap_err();
    assert!(common::chain(&err).contains("symbolic links"), "{err}");
}

#[test]
fn sparse_files_all_formats_keep_holes() {
    let seg = |o: u64, b: u8, n: usize| (o, vec![b; n]);
    let segs = vec![seg(4096, 1, 100), seg(1 << 20, 2, 5000), seg(3 << 20, 3, 1)];
    let many: Vec<(u64, Vec<u8>)> = (0..30).map(|i| seg(i * 8192, i as u8 + 1, 10)).collect();
    let mut t = TarBuilder::new();
    t.old_gnu_sparse("old", 4 << 20, &segs);
    t.old_gnu_sparse("old-ext", 30 * 8192, &many);
    t.pax_sparse("0.0", "p00", 4 << 20, &segs);
    t.pax_sparse("0.1", "p01", 4 << 20, &segs);
    t.pax_sparse("1.0", "p10", 4 << 20, &segs);
    // > 4 GiB, mostly hole.
    t.pax_sparse("1.0", "huge", 5 << 30, &[seg(4_500_000_000, 9, 4096)]);
    let f = flatten(vec![t.finish()]).unwrap();
    let d = dump(&f.tree, &f.spool);
    let first = d[&b"/old"[..]].split(" mode").next().unwrap().to_string();
    assert!(first.starts_with("file size=4194304"), "{first}");
    assert!(first.ends_with("extents=3"), "{first}");
    for p in ["/p00", "/p01", "/p10"] {
        assert_eq!(d[p.as_bytes()].split(" mode").next().unwrap(), first, "{p}");
    }
    assert!(d[&b"/old-ext"[..]].contains("extents=30"));
    assert!(
        d[&b"/huge"[..]].starts_with("file size=5368709120 extents=[(4500000000, 4096)]"),
        "{}",
        d[&b"/huge"[..]]
    );
    // The bytes land where the map says.
    let node = f
        .tree
        .node(match &f.tree.node(flattener::tree::Tree::ROOT).kind {
            flattener::tree::NodeKind::Directory { entries } => entries[&b"p10"[..]],
            _ => unreachable!(),
        });
    let flattener::tree::NodeKind::Regular { file } = node.kind else {
        panic!()
    };
    let bytes = common::file_bytes(&f.spool, f.tree.file(file));
    assert_eq!(bytes[4096], 1);
    assert_eq!(bytes[4095], 0);
    assert_eq!(bytes[(1 << 20) + 4999], 2);
    assert_eq!(bytes[3 << 20], 3);
}

#[test]
fn compression_formats_and_docker_archive_agree() {
    let layers = vec![
        tar(&[E::file("a", b"one"), E::dir("d")]),
        tar(&[E::file("d/b", &vec![7u8; 100_000]), E::whiteout(".wh.a")]),
    ];
    let reference = {
        let f = flatten_with(layers.iter().map(|t| (t.clone(), Comp::None)).collect()).unwrap();
        (dump(&f.tree, &f.spool), f.diff_ids)
    };
    for c in [Comp::Gzip, Comp::Zstd] {
        let f = flatten_with(layers.iter().map(|t| (t.clone(), c)).collect()).unwrap();
        assert_eq!((dump(&f.tree, &f.spool), f.diff_ids), reference, "{c:?}");
    }
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img.tar");
        common::docker_archive(&p, &layers, gz);
        let src = ImageRef::parse(&format!("docker-archive:{}", p.display()))
            .unwrap()
            .open(dir.path())
            .unwrap();
        let f = build_tree(&*src, &FlattenOptions::default(), dir.path()).unwrap();
        assert_eq!(
            (dump(&f.tree, &f.spool), f.diff_ids),
            reference,
            "gzip={gz}"
        );
    }
}

#[test]
fn layer_files_are_listed_in_path_order() {
    let f = flatten(vec![tar(&[
        E::file("z", b"1"),
        E::file("a/b", b"22"),
        E::file("m", b"333"),
    ])])
    .unwrap();
    let sizes: Vec<u64> = f.tree.layers[0]
        .iter()
        .map(|&id| f.tree.file(id).size)
        .collect();
    assert_eq!(sizes, vec![2, 3, 1]);
}

// ---- bad input ----

fn layer_error(layers: Vec<Vec<u8>>) -> String {
    match flatten(layers) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::Layer { .. }
                        | Error::DiffIdMismatch { .. }
                        | Error::DigestMismatch { .. }
                ),
                "{e:?}"
            );
            common::chain(&e)
        }
    }
}

#[test]
fn hard_link_to_missing_target_is_an_error() {
    let e = layer_error(vec![tar(&[E::hardlink("l", "nope")])]);
    assert!(e.contains("hard link to missing target \"nope\""), "{e}");
}

#[test]
fn replacing_root_with_a_file_is_an_error() {
    let e = layer_error(vec![tar(&[E::file("./", b"x")])]);
    assert!(e.contains("cannot replace /"), "{e}");
}

#[test]
fn name_component_of_256_bytes_is_an_error() {
    let e = layer_error(vec![tar(&[E::file(&"n".repeat(256), b"x")])]);
    assert!(e.contains("256 bytes"), "{e}");
    // 255 is fine.
    flatten(vec![tar(&[E::file(&"n".repeat(255), b"x")])]).unwrap();
}

#[test]
fn parent_that_is_a_file_is_an_error() {
    let e = layer_error(vec![
        tar(&[E::file("f", b"x")]),
        tar(&[E::file("f/g", b"y")]),
    ]);
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn truncated_tar_is_an_error() {
    let t = tar(&[E::file("a", &vec![1u8; 5000])]);
    let e = layer_error(vec![t[..2048].to_vec()]);
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn absurd_size_field_is_an_error() {
    let mut t = tar(&[E::file("a", b"x")]);
    // size = 0o77777777777 (8 GiB) with one block of data.
    t[124..136].copy_from_slice(b"77777777777\0");
    let e = E::file("a", b"x");
    let h = common::header(b"a", b'0', 0o77777777777, &e, false);
    t[..512].copy_from_slice(&h);
    let e = layer_error(vec![t]);
    assert!(e.contains("truncated"), "{e}");
    // Base-256 size beyond u64.
    let mut h = common::header(b"a", b'0', 0, &E::file("a", b""), false);
    h[124] = 0x80;
    h[125..136].fill(0xff);
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut t = h.to_vec();
    t.extend_from_slice(&[0u8; 1024]);
    let e = layer_error(vec![t]);
    assert!(e.contains("size"), "{e}");
}

#[test]
fn garbage_is_an_error() {
    let e = layer_error(vec![vec![0x42; 4096]]);
    assert!(e.contains("checksum"), "{e}");
}

#[test]
fn corrupt_gzip_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let t = tar(&[E::file("a", &vec![3u8; 100_000])]);
    oci_layout(&layout, &[("t", vec![(t, Comp::Gzip)])]);
    // Corrupt the layer blob and give it a matching digest, so the gzip
    // decoder is what notices.
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdig = idx["manifests"][0]["digest"].as_str().unwrap()[7..].to_string();
    let mpath = layout.join("blobs/sha256").join(&mdig);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let ldig = manifest["layers"][0]["digest"].as_str().unwrap()[7..].to_string();
    let mut blob = std::fs::read(layout.join("blobs/sha256").join(&ldig)).unwrap();
    let n = blob.len();
    for b in &mut blob[20..n - 10] {
        *b ^= 0x5a;
    }
    let newdig = common::sha256_hex(&blob);
    std::fs::write(layout.join("blobs/sha256").join(&newdig), &blob).unwrap();
    manifest["layers"][0]["digest"] = format!("sha256:{newdig}").into();
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let new_mdig = common::sha256_hex(&mbytes);
    std::fs::write(layout.join("blobs/sha256").join(&new_mdig), &mbytes).unwrap();
    let mut idx = idx;
    idx["manifests"][0]["digest"] = format!("sha256:{new_mdig}").into();
    idx["manifests"][0]["size"] = mbytes.len().into();
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    let src = ImageRef::parse(&format!("oci:{}", layout.display()))
        .unwrap()
        .open(dir.path())
        .unwrap();
    let err = build_tree(&*src, &FlattenOptions::default(), dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Layer { source: LayerError::Decompress { codec: "gzip", .. }, blob, .. } if blob.contains(&newdig)),
        "{err:?}"
    );
}

#[test]
fn blob_digest_mismatch_names_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let t = tar(&[E::file("a", b"hello")]);
    oci_layout(&layout, &[("t", vec![(t.clone(), Comp::None)])]);
    let dig = common::sha256_hex(&t);
    let p = layout.join("blobs/sha256").join(&dig);
    let mut b = std::fs::read(&p).unwrap();
    b[600] ^= 1; // inside the file data
    std::fs::write(&p, b).unwrap();
    let src = ImageRef::parse(&format!("oci:{}:t", layout.display()))
        .unwrap()
        .open(dir.path())
        .unwrap();
    let err = build_tree(&*src, &FlattenOptions::default(), dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { blob, .. } if blob.contains(&dig)),
        "{err:?}"
    );
}

#[test]
fn diff_id_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img.tar");
    // Config says diff_id of one tar, archive holds another.
    let good = tar(&[E::file("a", b"1")]);
    let bad = tar(&[E::file("a", b"2")]);
    common::docker_archive(&p, &[good], false);
    let mut bytes = std::fs::read(&p).unwrap();
    let pos = bytes
        .windows(bad.len())
        .position(|w| w == tar(&[E::file("a", b"1")]).as_slice())
        .unwrap();
    bytes[pos..pos + bad.len()].copy_from_slice(&bad);
    std::fs::write(&p, bytes).unwrap();
    let src = ImageRef::parse(&format!("docker-archive:{}", p.display()))
        .unwrap()
        .open(dir.path())
        .unwrap();
    let err = build_tree(&*src, &FlattenOptions::default(), dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::DiffIdMismatch { index: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn media_type_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let t = tar(&[E::file("a", b"1")]);
    oci_layout(&layout, &[("t", vec![(t, Comp::None)])]);
    // Relabel the plain layer as gzip.
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mpath = layout
        .join("blobs/sha256")
        .join(&idx["manifests"][0]["digest"].as_str().unwrap()[7..]);
    let m = std::fs::read_to_string(&mpath)
        .unwrap()
        .replace("v1.tar\"", "v1.tar+gzip\"");
    let d = common::sha256_hex(m.as_bytes());
    std::fs::write(layout.join("blobs/sha256").join(&d), &m).unwrap();
    let mut idx = idx;
    idx["manifests"][0]["digest"] = format!("sha256:{d}").into();
    idx["manifests"][0]["size"] = m.len().into();
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    let src = ImageRef::parse(&format!("oci:{}:t", layout.display()))
        .unwrap()
        .open(dir.path())
        .unwrap();
    let err = build_tree(&*src, &FlattenOptions::default(), dir.path()).unwrap_err();
    assert!(
        common::chain(&err).contains("media type says gzip but the data is tar"),
        "{err}"
    );
}

#[test]
fn tags_and_platforms() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    oci_layout(
        &layout,
        &[
            ("one", vec![(tar(&[E::file("1", b"")]), Comp::Gzip)]),
            ("two", vec![(tar(&[E::file("2", b"")]), Comp::Gzip)]),
        ],
    );
    let open = |r: &str| {
        ImageRef::parse(&format!("oci:{}{r}", layout.display()))
            .unwrap()
            .open(dir.path())
            .unwrap()
    };
    let f = build_tree(&*open(":two"), &FlattenOptions::default(), dir.path()).unwrap();
    assert!(dump(&f.tree, &f.spool).contains_key(&b"/2"[..]));
    let e = build_tree(&*open(""), &FlattenOptions::default(), dir.path()).unwrap_err();
    assert!(
        e.to_string()
            .contains("several images; add :TAG (tags: one, two)"),
        "{e}"
    );
    let e = build_tree(&*open(":three"), &FlattenOptions::default(), dir.path()).unwrap_err();
    assert!(
        e.to_string()
            .contains("no manifest tagged \"three\" (tags: one, two)"),
        "{e}"
    );

    // A multi-platform index: amd64 by default, arm64 on request.
    let mp = dir.path().join("mp");
    std::fs::create_dir_all(&mp).unwrap();
    let amd = common::add_image(&mp, &[(tar(&[E::file("amd64", b"")]), Comp::Gzip)], "amd64");
    let arm = common::add_image(&mp, &[(tar(&[E::file("arm64", b"")]), Comp::Gzip)], "arm64");
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [arm, amd]});
    std::fs::write(mp.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let src = ImageRef::parse(&format!("oci:{}", mp.display()))
        .unwrap()
        .open(dir.path())
        .unwrap();
    let f = build_tree(&*src, &FlattenOptions::default(), dir.path()).unwrap();
    assert!(dump(&f.tree, &f.spool).contains_key(&b"/amd64"[..]));
    let opts =
        FlattenOptions::default().with_platform(flattener::Platform::parse("linux/arm64").unwrap());
    let f = build_tree(&*src, &opts, dir.path()).unwrap();
    assert!(dump(&f.tree, &f.spool).contains_key(&b"/arm64"[..]));
    let opts =
        FlattenOptions::default().with_platform(flattener::Platform::parse("linux/s390x").unwrap());
    assert!(build_tree(&*src, &opts, dir.path()).is_err());

    // A single image is taken whatever its platform, unless one is asked
    // for: then its config must say that platform (as `docker pull --platform`).
    let single = dir.path().join("single");
    let t = tar(&[E::file("a", b"")]);
    common::raw_layout(
        &single,
        &[(t.clone(), "application/vnd.oci.image.layer.v1.tar", t)],
    );
    let src = ImageRef::parse(&format!("oci:{}", single.display()))
        .unwrap()
        .open(dir.path())
        .unwrap();
    assert!(build_tree(&*src, &FlattenOptions::default(), dir.path()).is_ok());
    let amd =
        FlattenOptions::default().with_platform(flattener::Platform::parse("linux/amd64").unwrap());
    assert!(build_tree(&*src, &amd, dir.path()).is_ok());
    let e = build_tree(&*src, &opts, dir.path()).unwrap_err();
    assert!(
        e.to_string()
            .contains("built for linux/amd64, not for linux/s390x"),
        "{e}"
    );
}

#[test]
fn progress_reports_bytes_read() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    oci_layout(
        &layout,
        &[(
            "t",
            vec![(tar(&[E::file("a", &vec![1u8; 300_000])]), Comp::None)],
        )],
    );
    let src = ImageRef::parse(&format!("oci:{}:t", layout.display()))
        .unwrap()
        .open(dir.path())
        .unwrap();
    let max = std::sync::atomic::AtomicU64::new(0);
    let cb = |p: flattener::Progress| {
        max.fetch_max(p.bytes_read, std::sync::atomic::Ordering::Relaxed);
        assert!(p.bytes_total >= p.bytes_read);
    };
    let opts = FlattenOptions::default().with_progress(&cb);
    build_tree(&*src, &opts, dir.path()).unwrap();
    let total = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() > 300_000)
        .map(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    assert_eq!(max.load(std::sync::atomic::Ordering::Relaxed), total);
}

#[test]
fn docker_archive_with_blob_layout_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![tar(&[E::file("a", b"one")]), tar(&[E::file("b", b"two")])];
    let p = dir.path().join("new.tar");
    common::docker_archive_blobs(&p, &layers);
    for r in ["", ":b:2"] {
        let src = ImageRef::parse(&format!("docker-archive:{}{r}", p.display()))
            .unwrap()
            .open(dir.path())
            .unwrap();
        let f = build_tree(&*src, &FlattenOptions::default(), dir.path()).unwrap();
        assert!(dump(&f.tree, &f.spool).contains_key(&b"/b"[..]));
    }
    let src = ImageRef::parse(&format!("docker-archive:{}:c:3", p.display()))
        .unwrap()
        .open(dir.path())
        .unwrap();
    assert!(build_tree(&*src, &FlattenOptions::default(), dir.path()).is_err());
    // Flip a byte of the first layer's file data inside the archive.
    let mut bytes = std::fs::read(&p).unwrap();
    let pos = bytes.windows(3).position(|w| w == b"one").unwrap();
    bytes[pos] = b'O';
    std::fs::write(&p, bytes).unwrap();
    let src = ImageRef::parse(&format!("docker-archive:{}", p.display()))
        .unwrap()
        .open(dir.path())
        .unwrap();
    let err = build_tree(&*src, &FlattenOptions::default(), dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { blob, .. } if blob.starts_with("blobs/sha256/")),
        "{err:?}"
    );
}

#[test]
fn old_style_directory_with_trailing_slash() {
    let mut e = E::file("olddir/", b"");
    e.typeflag = 0;
    let l = listing(vec![tar(&[e, E::file("olddir/f", b"x")])]);
    assert!(kind(&l, "/olddir").starts_with("dir"), "{l:?}");
}

/// An OCI layout whose blobs, diff_ids and descriptors all use sha512 (the
/// other algorithm the image spec registers), with gzip layers.
fn sha512_layout(dir: &std::path::Path, tars: &[Vec<u8>]) {
    use sha2::{Digest as _, Sha512};
    let put = |bytes: &[u8]| {
        let hex = hex::encode(Sha512::digest(bytes));
        let blobs = dir.join("blobs/sha512");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha512:{hex}")
    };
    let diff_ids: Vec<String> = tars
        .iter()
        .map(|t| format!("sha512:{}", hex::encode(Sha512::digest(t))))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let layers: Vec<_> = tars
        .iter()
        .map(|t| {
            let blob = common::compress(t, Comp::Gzip);
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(&blob), "size": blob.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put(&config), "size": config.len()},
        "layers": layers
    }))
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put(&manifest), "size": manifest.len()}]});
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn sha512_layouts_are_read_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let tars = vec![
        tar(&[E::dir("etc"), E::file("etc/a", b"base")]),
        tar(&[E::file("etc/b", b"top"), E::whiteout("etc/.wh.a")]),
    ];
    let layout = dir.path().join("sha512");
    sha512_layout(&layout, &tars);
    let open = |l: &std::path::Path| {
        ImageRef::parse(&format!("oci:{}", l.display()))
            .unwrap()
            .open(dir.path())
            .unwrap()
    };
    let f = build_tree(&*open(&layout), &FlattenOptions::default(), dir.path()).unwrap();
    assert!(f.diff_ids.iter().all(|d| d.as_str().starts_with("sha512:")));

    // The same tree as the sha256 layout of the same layers.
    let plain = dir.path().join("sha256");
    oci_layout(
        &plain,
        &[("t", tars.iter().map(|t| (t.clone(), Comp::Gzip)).collect())],
    );
    let g = build_tree(&*open(&plain), &FlattenOptions::default(), dir.path()).unwrap();
    assert_eq!(dump(&f.tree, &f.spool), dump(&g.tree, &g.spool));

    // A changed byte in a sha512 layer blob is caught by its digest.
    let blobs: Vec<_> = std::fs::read_dir(layout.join("blobs/sha512"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let gz = blobs
        .iter()
        .find(|p| std::fs::read(p).unwrap().starts_with(&[0x1f, 0x8b]))
        .unwrap();
    let mut bytes = std::fs::read(gz).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(gz, bytes).unwrap();
    let e = build_tree(&*open(&layout), &FlattenOptions::default(), dir.path()).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains("sha512:"), "{e}");
}
