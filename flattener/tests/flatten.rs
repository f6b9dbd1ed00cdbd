//! End to end: images built here are flattened to ext4, checked with
//! `e2fsck -fn`, loop-mounted read-only and compared with what the OCI
//! layer rules give; determinism across formats, entry orders and runs.

mod common;

use std::path::Path;

use common::fs::{Mount, diff, e2fsck, have, list_dir, list_tree};
use common::{Comp, E, TarBuilder, oci_layout, tar};
use flattener::ext4::DeletedData;
use flattener::{FlattenOptions, ImageRef, build_tree, flatten, flatten_to_writer};
use proptest::prelude::*;

/// A stack covering the layer semantics.
fn rich_layers() -> Vec<Vec<u8>> {
    let mut base = TarBuilder::new();
    for e in [
        E::dir("etc").mtime(1_600_000_000, 5),
        E::file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        E::file("etc/shadow", b"root:*:1::::::\n")
            .mode(0o640)
            .owner(0, 42),
        E::dir("tmp").mode(0o1777),
        E::dir("usr/bin"),
        E::file("usr/bin/perl", &vec![0x7f; 70_000]).mode(0o755),
        E::hardlink("usr/bin/perl5.36", "usr/bin/perl"),
        E::file("usr/bin/su", b"su").mode(0o4755),
        E::file("usr/bin/wall", b"wall").mode(0o2755).owner(0, 5),
        E::symlink("bin", "usr/bin"),
        E::symlink("dangling", "/nowhere/at/all"),
        E::dev("dev/null", b'3', 1, 3).mode(0o666),
        E::dev("dev/loop0", b'4', 7, 0).mode(0o660).owner(0, 6),
        E::dev("dev/initctl", b'6', 0, 0),
        E::file("old", b"before 1970").mtime(-86_400 * 365, 123),
        E::file("future", b"after 2038").mtime(4_102_444_800, 999_999_999),
        E::file("cap", b"ping")
            .xattr(
                "security.capability",
                &[
                    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            )
            .xattr("user.comment", b"hello"),
        E::file_b(b"caf\xe9", b"latin-1 name"),
        E::file("acl", b"acl")
            .mode(0o640)
            .xattr("system.posix_acl_access", &common::acl_xattr()),
        E::dir("acl-dir").xattr("system.posix_acl_default", &common::acl_xattr()),
        E::file(
            &format!("{}/{}", "long".repeat(40), "n".repeat(200)),
            b"long path",
        ),
        E::dir("opaque"),
        E::file("opaque/lower", b"hidden later"),
        E::dir("gone"),
        E::file("gone/file", b"deleted later"),
        E::file("f2d", b"file, becomes a dir"),
        E::dir("d2f"),
        E::file("d2f/x", b"dir, becomes a file"),
    ] {
        base.add(&e);
    }
    base.old_gnu_sparse(
        "sparse-old",
        3 << 20,
        &[(0, vec![1; 4096]), (2 << 20, vec![2; 10])],
    );
    base.pax_sparse("1.0", "sparse-pax", 6 << 30, &[(5 << 30, vec![3; 8192])]);
    let upper = tar(&[
        E::file("usr/bin/perl", b"new perl").mode(0o755),
        E::whiteout(".wh.gone"),
        E::whiteout("opaque/.wh..wh..opq"),
        E::file("opaque/upper", b"visible"),
        E::dir("f2d"),
        E::file("f2d/inside", b"in"),
        E::file("d2f", b"now a file"),
        E::whiteout("etc/.wh.never-existed"),
        E::file("bin/through-symlink", b"lands in usr/bin"),
        E::hardlink("usr/bin/perl-old", "usr/bin/perl5.36"),
    ]);
    vec![base.finish(), upper]
}

fn make_layout(dir: &Path, layers: &[Vec<u8>], c: Comp) -> ImageRef {
    let layout = dir.join(format!("layout-{c:?}"));
    oci_layout(
        &layout,
        &[("img", layers.iter().map(|t| (t.clone(), c)).collect())],
    );
    ImageRef::parse(&format!("oci:{}:img", layout.display())).unwrap()
}

#[test]
fn rich_image_passes_e2fsck_mounts_and_matches_the_layer_rules() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_layout(dir.path(), &rich_layers(), Comp::Gzip);
    let out = dir.path().join("out.ext4");
    let s = flatten(&img, &FlattenOptions::default(), &out).unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), s.size);
    assert_eq!(flattener::sha256_file(&out).unwrap(), s.sha256);
    // No temp files left next to the output.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // The tree the image must hold, as the flattener computed it.
    let src = img.open(dir.path()).unwrap();
    let f = build_tree(&*src, &FlattenOptions::default(), dir.path()).unwrap();
    let want = list_tree(&f.tree, &f.spool);
    let g = |p: &str| {
        want.get(p.as_bytes())
            .cloned()
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    // Spot checks against the OCI rules, independent of the code.
    assert!(g("/usr/bin/perl").starts_with("file size=8 "));
    assert!(g("/usr/bin/perl5.36").starts_with("file size=70000 "));
    assert!(g("/usr/bin/perl5.36").contains("nlink=2 group=/usr/bin/perl-old"));
    assert!(g("/usr/bin/perl").contains("nlink=1"));
    assert!(!want.contains_key(&b"/gone"[..]));
    assert!(!want.contains_key(&b"/opaque/lower"[..]));
    assert!(g("/opaque/upper").starts_with("file"));
    assert!(g("/f2d").starts_with("dir"));
    assert!(g("/d2f").starts_with("file size=10"));
    assert!(g("/usr/bin/through-symlink").starts_with("file"));
    assert!(g("/bin").starts_with("symlink usr/bin"));
    assert!(g("/old").contains("t=-31536000.000000123"));
    assert!(g("/future").contains("t=4102444800.999999999"));
    assert!(g("/cap").contains("security.capability="));
    assert!(g("/sparse-pax").starts_with("file size=6442450944"));
    assert!(g("/dev/loop0").starts_with("block 7:0 mode=660 0:6"));
    assert!(g("/usr/bin/su").contains("mode=4755"));
    assert!(g("/tmp").contains("mode=1777"));
    assert!(want.contains_key(&b"/caf\xe9"[..]));
    assert!(g("/acl").contains("system.posix_acl_access="));
    assert!(g("/acl-dir").contains("system.posix_acl_default="));

    if !have("e2fsck") {
        return;
    }
    e2fsck(&out).unwrap();
    let Some(m) = Mount::new(&out) else { return };
    let got = list_dir(m.path());
    let d = diff(&want, &got, 20);
    assert!(d.is_empty(), "tree and mount differ:\n{}", d.join("\n"));
    // No lost+found or anything else extra.
    assert_eq!(got.len(), want.len());
}

#[test]
fn same_layers_give_the_same_bytes_from_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let layers = rich_layers();
    let mut digests = Vec::new();
    for c in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let img = make_layout(dir.path(), &layers, c);
        let s = flatten_to_writer(&img, &FlattenOptions::default(), std::io::sink()).unwrap();
        digests.push((format!("{c:?}"), s.sha256));
    }
    for gz in [false, true] {
        let p = dir.path().join(format!("archive-{gz}.tar"));
        common::docker_archive(&p, &layers, gz);
        let img = ImageRef::parse(&format!("docker-archive:{}", p.display())).unwrap();
        let s = flatten_to_writer(&img, &FlattenOptions::default(), std::io::sink()).unwrap();
        digests.push((format!("docker-archive gzip={gz}"), s.sha256));
    }
    // Thread count does not matter either.
    let img = make_layout(dir.path(), &layers, Comp::Gzip);
    let mut o = FlattenOptions::default();
    o.threads = 1;
    let s = flatten_to_writer(&img, &o, std::io::sink()).unwrap();
    digests.push(("one thread".into(), s.sha256));
    assert!(
        digests.iter().all(|(_, d)| *d == digests[0].1),
        "{digests:#?}"
    );
}

/// Pins the format: a change of this digest must be deliberate.
#[test]
fn golden_digest_of_the_rich_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_layout(dir.path(), &rich_layers(), Comp::None);
    let zero = flatten_to_writer(
        &img,
        &FlattenOptions::default().with_deleted_data(DeletedData::Zero),
        std::io::sink(),
    )
    .unwrap();
    let keep = flatten_to_writer(
        &img,
        &FlattenOptions::default().with_deleted_data(DeletedData::Keep),
        std::io::sink(),
    )
    .unwrap();
    assert_eq!(
        (zero.sha256.as_str(), keep.sha256.as_str()),
        (
            "ac90923f8235d1aa6158b8c9d0559a9dfbd93ab82b9a7a2f13ac4f5f224764e5",
            "bdf6725a1cebe946e4a75c549cb5fa9eb311dde164dd47b33eadc7d87a618c68"
        ),
        "image format changed; update the golden digests only if that was intended"
    );
}

#[test]
fn failures_leave_no_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = vec![
        tar(&[E::file("a", b"x")]),
        tar(&[E::hardlink("b", "missing")]),
    ];
    let img = make_layout(dir.path(), &bad, Comp::Gzip);
    let out = dir.path().join("out.ext4");
    let err = flatten(&img, &FlattenOptions::default(), &out).unwrap_err();
    assert!(
        common::chain(&err).contains("hard link to missing target"),
        "{err}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("layout"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // An existing good image is not replaced by a failed run.
    let good = make_layout(dir.path(), &[tar(&[E::file("a", b"x")])], Comp::None);
    let s = flatten(&good, &FlattenOptions::default(), &out).unwrap();
    flatten(&img, &FlattenOptions::default(), &out).unwrap_err();
    assert_eq!(flattener::sha256_file(&out).unwrap(), s.sha256);
}

// ---- determinism under random stacks and shuffled entry order ----

const PATHS: &[&str] = &[
    "a", "b", "a/x", "a/y", "b/x", "c", "c/d/e", "a/x/z", "d", "b/y/z",
];

#[derive(Clone, Debug)]
enum G {
    File(u8, u16),
    Dir,
    Sym(u8),
    Whiteout,
    Opaque,
    Link(u8),
    Fifo,
}

fn g_strategy() -> impl Strategy<Value = G> {
    prop_oneof![
        4 => (any::<u8>(), 0u16..9000).prop_map(|(c, n)| G::File(c, n)),
        2 => Just(G::Dir),
        1 => any::<u8>().prop_map(G::Sym),
        1 => Just(G::Whiteout),
        1 => Just(G::Opaque),
        1 => any::<u8>().prop_map(G::Link),
        1 => Just(G::Fifo),
    ]
}

type LayerSpec = Vec<(usize, G, u32, i64)>;

fn layer_entries(spec: &LayerSpec) -> Vec<E> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (p, g, mode, t) in spec {
        let path = PATHS[*p];
        if !seen.insert(path) {
            continue; // one entry per path: duplicates are order-dependent by nature
        }
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        let e = match g {
            G::File(c, n) => E::file(path, &vec![*c; usize::from(*n)]),
            G::Dir => E::dir(path),
            G::Sym(c) => E::symlink(path, PATHS[usize::from(*c) % PATHS.len()]),
            G::Whiteout => E::whiteout(&format!("{dir}.wh.{name}")),
            G::Opaque => E::whiteout(&format!("{path}/.wh..wh..opq")),
            G::Link(c) => E::hardlink(path, PATHS[usize::from(*c) % PATHS.len()]),
            G::Fifo => E::dev(path, b'6', 0, 0),
        };
        out.push(e.mode(*mode).mtime(*t, (*mode * 7) % 1_000_000_000));
    }
    out
}

fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

fn image_digest(dir: &Path, name: &str, layers: &[Vec<u8>]) -> Result<String, String> {
    let layout = dir.join(name);
    oci_layout(
        &layout,
        &[(
            "t",
            layers.iter().map(|t| (t.clone(), Comp::None)).collect(),
        )],
    );
    let img = ImageRef::parse(&format!("oci:{}:t", layout.display())).unwrap();
    flatten_to_writer(&img, &FlattenOptions::default(), std::io::sink())
        .map(|s| s.sha256)
        .map_err(|e| match e {
            // The blob digest differs with the order; the reason must not.
            flattener::Error::Layer { index, source, .. } => format!("layer {index}: {source}"),
            other => other.to_string(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn flattening_is_deterministic_and_ignores_entry_order(
        stack in prop::collection::vec(
            prop::collection::vec((0..PATHS.len(), g_strategy(), prop_oneof![Just(0o644u32), Just(0o755), Just(0o4711), Just(0o1777)], -5_000_000_000i64..5_000_000_000), 0..8),
            1..4),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Vec<E>> = stack.iter().map(layer_entries).collect();
        let tars: Vec<Vec<u8>> = entries.iter().map(|e| tar(e)).collect();
        let first = image_digest(dir.path(), "one", &tars);
        let second = image_digest(dir.path(), "two", &tars);
        prop_assert_eq!(&first, &second);
        let shuffled: Vec<Vec<u8>> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut e = e.clone();
                shuffle(&mut e, seed ^ i as u64);
                tar(&e)
            })
            .collect();
        let third = image_digest(dir.path(), "three", &shuffled);
        prop_assert_eq!(&first, &third);
    }
}

/// The tricky layer rules against an independent implementation: the rich
/// stack (minus what umoci cannot do: old-GNU sparse, far-future mtimes)
/// flattened and mounted must equal `umoci unpack`.
#[test]
fn rich_image_matches_umoci() {
    if !have("e2fsck") || !have("umoci") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![umoci_safe_base(), rich_layers()[1].clone()];
    let img = make_layout(dir.path(), &layers, Comp::Gzip);
    let out = dir.path().join("out.ext4");
    flatten(&img, &FlattenOptions::default(), &out).unwrap();
    e2fsck(&out).unwrap();
    let Some(m) = Mount::new(&out) else { return };
    let ours = list_dir(m.path());
    drop(m);
    let ImageRef::Oci { dir: layout, tag } = &img else {
        unreachable!()
    };
    let bundle = dir.path().join("bundle");
    let st = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{}", layout.display(), tag.as_deref().unwrap()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mut reference = list_dir(&bundle.join("rootfs"));
    // Directories no layer lists (parents created implicitly, and `/`)
    // get umoci's clock time; ours get the epoch, deterministically.
    let mut implicit = 0;
    for (path, line) in &ours {
        if line.starts_with("dir ")
            && line.contains(" t=0.000000000 ")
            && let Some(r) = reference.get_mut(path)
        {
            let start = r.find(" t=").unwrap();
            let end = start + 1 + r[start + 1..].find(' ').unwrap();
            r.replace_range(start..end, " t=0.000000000");
            implicit += 1;
        }
    }
    assert!(implicit <= 5, "{implicit} implicit directories");
    let d = diff(&ours, &reference, 40);
    assert!(
        d.is_empty(),
        "mounted image and umoci unpack differ:\n{}",
        d.join("\n")
    );
    assert!(ours.len() >= 25, "{} entries", ours.len());
}

fn umoci_safe_base() -> Vec<u8> {
    let mut base = TarBuilder::new();
    for e in [
        E::dir("etc").mtime(1_600_000_000, 5),
        E::file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        E::file("etc/shadow", b"root:*:1::::::\n")
            .mode(0o640)
            .owner(0, 42),
        E::dir("tmp").mode(0o1777),
        E::dir("usr/bin"),
        E::file("usr/bin/perl", &vec![0x7f; 70_000]).mode(0o755),
        E::hardlink("usr/bin/perl5.36", "usr/bin/perl"),
        E::file("usr/bin/su", b"su").mode(0o4755),
        E::file("usr/bin/wall", b"wall").mode(0o2755).owner(0, 5),
        E::symlink("bin", "usr/bin"),
        E::symlink("dangling", "/nowhere/at/all"),
        E::dev("dev/null", b'3', 1, 3).mode(0o666),
        E::dev("dev/loop0", b'4', 7, 0).mode(0o660).owner(0, 6),
        E::dev("dev/initctl", b'6', 0, 0),
        E::file("old", b"before 1970").mtime(-86_400 * 365, 123),
        E::file("cap", b"ping").xattr("user.comment", b"hello"),
        E::file_b(b"caf\xe9", b"latin-1 name"),
        E::file(
            &format!("{}/{}", "long".repeat(40), "n".repeat(200)),
            b"long path",
        ),
        E::dir("opaque"),
        E::file("opaque/lower", b"hidden later"),
        E::dir("gone"),
        E::file("gone/file", b"deleted later"),
        E::file("f2d", b"file, becomes a dir"),
        E::dir("d2f"),
        E::file("d2f/x", b"dir, becomes a file"),
    ] {
        base.add(&e);
    }
    base.pax_sparse("1.0", "sparse-pax", 3 << 20, &[(2 << 20, vec![3; 8192])]);
    base.finish()
}
