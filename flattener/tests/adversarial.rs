//! Adversarial images: odd entry orders, link games, ext4 limits and tar or
//! compression quirks. Each case is flattened, checked with `e2fsck -fn`,
//! loop-mounted read-only and compared with a hand-written model of what
//! the OCI layer rules give (not with the flattener's own tree), or must
//! fail with a clear error and leave no output file.

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::fs::{Mount, e2fsck, have, xattrs};
use common::{E, RawLayer, TarBuilder, sha256_hex, tar};
use flattener::{FlattenOptions, ImageRef, flatten};

// ---- harness ----

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// An OCI layout of one image whose layers are (blob, media type, the
/// uncompressed tar the diff_id is computed from).
fn layout_raw(dir: &Path, layers: &[RawLayer<'_>]) -> ImageRef {
    let layout = dir.join("layout");
    common::raw_layout(&layout, layers);
    ImageRef::parse(&format!("oci:{}", layout.display())).unwrap()
}

fn plain(layers: &[Vec<u8>]) -> Vec<RawLayer<'static>> {
    layers.iter().map(|t| (t.clone(), TAR, t.clone())).collect()
}

/// Flattens; on success the image must pass `e2fsck -fn`.
fn flatten_image(dir: &Path, layers: &[RawLayer<'_>]) -> Result<PathBuf, flattener::Error> {
    let img = layout_raw(dir, layers);
    let out = dir.join("out.ext4");
    flatten(&img, &FlattenOptions::default(), &out)?;
    if have("e2fsck") {
        e2fsck(&out).unwrap();
    }
    Ok(out)
}

/// The error text (with its sources) of a flatten that must fail; no
/// output file may be left.
fn flatten_error(layers: &[RawLayer<'_>]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let err = match flatten_image(dir.path(), layers) {
        Ok(_) => panic!("flattening succeeded but must fail"),
        Err(e) => e,
    };
    assert!(!dir.path().join("out.ext4").exists());
    common::chain(&err)
}

fn content_token(data: &[u8]) -> String {
    if data.len() <= 64 {
        data.escape_ascii().to_string().replace(' ', "\\x20")
    } else {
        format!("sha:{}", &sha256_hex(data)[..16])
    }
}

/// One line per path of a mounted tree: `path kind m=MODE o=UID:GID
/// t=SEC.NSEC n=NLINK [x:NAME=HEX]... [g=FIRST-PATH-OF-HARD-LINK-GROUP]`.
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut groups: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![(String::from("/"), root.to_path_buf())];
    let mut all = Vec::new();
    while let Some((rel, path)) = stack.pop() {
        let md = std::fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().as_bytes().escape_ascii().to_string();
                let r = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((r, e.path()));
            }
            "dir".to_string()
        } else if ft.is_file() {
            if md.size() > 1 << 20 {
                format!("file:size={}", md.size())
            } else {
                format!("file:{}", content_token(&std::fs::read(&path).unwrap()))
            }
        } else if ft.is_symlink() {
            format!(
                "link:{}",
                content_token(std::fs::read_link(&path).unwrap().as_os_str().as_bytes())
            )
        } else if ft.is_char_device() || ft.is_block_device() {
            let t = if ft.is_char_device() { "char" } else { "block" };
            format!("{t}:{}:{}", libc::major(md.rdev()), libc::minor(md.rdev()))
        } else if ft.is_fifo() {
            "fifo".into()
        } else {
            "socket".into()
        };
        let mut line = format!(
            "{kind} m={:o} o={}:{} t={}.{:09} n={}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec(),
            md.nlink()
        );
        for (k, v) in xattrs(&path) {
            line.push_str(&format!(" x:{}={}", k.escape_ascii(), hex::encode(v)));
        }
        all.push((rel, line, md.ino(), !ft.is_dir() && md.nlink() > 1));
    }
    all.sort();
    for (rel, mut line, ino, linked) in all {
        if linked {
            let g = groups.entry(ino).or_insert_with(|| rel.clone());
            line.push_str(&format!(" g={g}"));
        }
        out.insert(rel, line);
    }
    out
}

/// Flattens, checks with e2fsck, mounts, and compares with `want`: one
/// line per path (`/` included), `path` then tokens that must all appear in
/// the mounted path's line (if any is an xattr, the xattrs must be exactly
/// those). Exactly the listed paths must exist.
fn check_raw(layers: &[RawLayer<'_>], want: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = match flatten_image(dir.path(), layers) {
        Ok(o) => o,
        Err(e) => panic!("flatten failed: {e} ({e:?})"),
    };
    if !have("e2fsck") {
        return;
    }
    let Some(m) = Mount::new(&out) else { return };
    let got = listing(m.path());
    let mut problems = Vec::new();
    let mut wanted = BTreeMap::new();
    for w in want {
        let (path, tokens) = w.split_once(' ').unwrap_or((w, ""));
        wanted.insert(path.to_string(), tokens);
    }
    for (path, tokens) in &wanted {
        match got.get(path) {
            None => problems.push(format!("missing {path}")),
            Some(line) => {
                let have: Vec<&str> = line.split(' ').collect();
                let want: Vec<&str> = tokens.split(' ').filter(|t| !t.is_empty()).collect();
                for t in &want {
                    if !have.contains(t) {
                        problems.push(format!("{path}: want {t}, got {line}"));
                    }
                }
                // Naming any xattr means naming them all.
                let xs = |v: &[&str]| v.iter().filter(|t| t.starts_with("x:")).count();
                if xs(&want) > 0 && xs(&want) != xs(&have) {
                    problems.push(format!("{path}: other xattrs than wanted: {line}"));
                }
            }
        }
    }
    for (path, line) in &got {
        if !wanted.contains_key(path) {
            problems.push(format!("extra {path} {line}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn check(layers: &[Vec<u8>], want: &[&str]) {
    check_raw(&plain(layers), want);
}

fn error_of(layers: &[Vec<u8>]) -> String {
    flatten_error(&plain(layers))
}

/// Flattening `layers` fails with an error whose text names every needle.
fn expect_error(layers: &[Vec<u8>], needles: &[&str]) {
    let e = error_of(layers);
    for n in needles {
        assert!(e.contains(n), "error lacks {n:?}: {e}");
    }
}

/// A tar of raw header+data records (no end blocks added).
fn raw_entry(h: [u8; 512], data: &[u8]) -> Vec<u8> {
    let mut v = h.to_vec();
    v.extend_from_slice(data);
    v.resize(512 + data.len().div_ceil(512) * 512, 0);
    v
}

// ---- entry order and link games ----

#[test]
fn entry_order_does_not_matter() {
    // Children before their directory (whose mode and mtime must win), the
    // same path twice (the last wins), a hard link before its target, a
    // link to a link, a link to a symlink.
    check(
        &[tar(&[
            E::file("d/f", b"child"),
            E::dir("d").mode(0o700).mtime(1_000, 5),
            E::file("twice", b"first"),
            E::file("twice", b"second").mode(0o600),
            E::hardlink("l1", "target"),
            E::hardlink("l2", "l1"),
            E::file("target", b"shared").mode(0o640),
            E::symlink("sym", "target"),
            E::hardlink("sym2", "sym"),
        ])],
        &[
            "/ dir m=755",
            "/d dir m=700 t=1000.000000005",
            "/d/f file:child",
            "/twice file:second m=600 n=1",
            "/target file:shared m=640 n=3 g=/l1",
            "/l1 file:shared n=3 g=/l1",
            "/l2 file:shared n=3 g=/l1",
            "/sym link:target n=2 g=/sym",
            "/sym2 link:target n=2 g=/sym",
        ],
    );
}

#[test]
fn hard_links_survive_their_target_being_removed_above() {
    check(
        &[
            tar(&[
                E::file("a", b"data"),
                E::hardlink("b", "a"),
                E::hardlink("c", "a"),
                E::file("w", b"w"),
                E::hardlink("wl", "w"),
            ]),
            tar(&[
                E::whiteout(".wh.a"),
                E::file("c", b"new c"),
                // A whiteout of one name of a hard-linked file.
                E::whiteout(".wh.wl"),
                // A link to a lower file this same layer deletes (tar
                // order: the link first): the link keeps it.
                E::hardlink("keep", "w"),
                E::whiteout(".wh.w"),
            ]),
        ],
        &[
            "/ dir",
            "/b file:data n=1",
            "/c file:new\\x20c n=1",
            "/keep file:w n=1",
        ],
    );
}

#[test]
fn whiteouts_apply_to_lower_layers_only() {
    check(
        &[
            tar(&[E::file("x/old", b"old"), E::file("y", b"lower y")]),
            tar(&[
                // The entries of the layer come after the markers in tar
                // order and before them; both survive.
                E::file("x/new1", b"n1"),
                E::whiteout("x/.wh..wh..opq"),
                E::file("x/new2", b"n2"),
                E::whiteout(".wh.y"),
                E::file("y", b"upper y"),
                // aufs metadata and a whiteout of the opaque marker itself:
                // ignored.
                E::whiteout("x/.wh..wh..wh..opq"),
                E::whiteout(".wh..wh.aufs"),
                // aufs-era hard links: the target lives in /.wh..wh.plnk,
                // which is not part of the image (as Docker does it).
                E::dir(".wh..wh.plnk"),
                E::file(".wh..wh.plnk/123.456", b"aufs"),
                E::hardlink("aufs1", ".wh..wh.plnk/123.456"),
                E::hardlink("x/aufs2", "/.wh..wh.plnk/123.456"),
                E::dir(".wh..wh.orph"),
                E::file(".wh..wh.orph/junk", b"junk"),
            ]),
        ],
        &[
            "/ dir",
            "/x dir",
            "/x/new1 file:n1",
            "/x/new2 file:n2",
            "/y file:upper\\x20y",
            "/aufs1 file:aufs n=2 g=/aufs1",
            "/x/aufs2 file:aufs n=2 g=/aufs1",
        ],
    );
}

#[test]
fn hard_link_to_a_directory_is_an_error() {
    expect_error(
        &[tar(&[E::dir("d"), E::hardlink("l", "d")])],
        &["hard link to a directory", "\"l\""],
    );
}

#[test]
fn bare_whiteout_prefix_is_an_error() {
    expect_error(
        &[tar(&[E::dir("d"), E::whiteout("d/.wh.")])],
        &["whiteout without a valid name"],
    );
}

// ---- names and paths ----

#[test]
fn odd_paths_are_normalized_inside_the_root() {
    let n255 = "n".repeat(255);
    check(
        &[tar(&[
            E::dir("./")
                .mode(0o750)
                .mtime(7, 0)
                .owner(3, 4)
                .xattr("user.root", b"r"),
            E::file("./a//b/./c", b"c"),
            E::file("/abs/x", b"x"),
            E::file("../../up", b"up"),
            E::file("f/", b"slash"),
            E::hardlink("hl", "/a/b/../b/c"),
            E::hardlink("hl2", "../../../up"),
            E::file(&format!("long/{n255}"), b"255"),
            E::symlink("esc", "../../../../etc"),
            E::file("esc/passwd", b"through an escaping symlink"),
        ])],
        &[
            "/ dir m=750 o=3:4 t=7.000000000 x:user.root=72",
            "/a dir m=755 t=0.000000000",
            "/a/b dir",
            "/a/b/c file:c n=2 g=/a/b/c",
            "/hl file:c n=2 g=/a/b/c",
            "/abs dir",
            "/abs/x file:x",
            "/up file:up n=2 g=/hl2",
            "/hl2 file:up n=2 g=/hl2",
            "/f file:slash",
            "/long dir",
            &format!("/long/{n255} file:255"),
            "/esc link:../../../../etc",
            "/etc dir",
            "/etc/passwd file:through\\x20an\\x20escaping\\x20symlink",
        ],
    );
}

#[test]
fn empty_name_file_is_an_error() {
    expect_error(
        &[tar(&[E::file("", b"x")])],
        &["cannot replace / with a non-directory"],
    );
}

// ---- symlinks ----

#[test]
fn symlink_targets_around_the_inline_limit() {
    let t = |n: usize| "t".repeat(n);
    check(
        &[tar(&[
            E::symlink("s59", &t(59)),
            E::symlink("s60", &t(60)),
            E::symlink("s61", &t(61)),
            E::symlink("s4095", &"/x".repeat(2048)[..4095]),
        ])],
        &[
            "/ dir",
            &format!("/s59 link:{}", t(59)),
            &format!("/s60 link:{}", content_token(t(60).as_bytes())),
            &format!("/s61 link:{}", content_token(t(61).as_bytes())),
            &format!(
                "/s4095 link:{}",
                content_token(&"/x".repeat(2048).as_bytes()[..4095])
            ),
        ],
    );
    expect_error(
        &[tar(&[E::symlink("s4096", &t(4096))])],
        &["invalid symlink target of 4096 bytes", "s4096"],
    );
}

// ---- owners, times, devices ----

/// A tar holding `/ids`, owned by `uid`:`gid` as PAX records give them.
fn file_with_pax_ids(uid: &str, gid: &str) -> TarBuilder {
    let mut t = TarBuilder::new();
    t.pax(&[
        (b"uid".to_vec(), uid.as_bytes().to_vec()),
        (b"gid".to_vec(), gid.as_bytes().to_vec()),
    ]);
    t.add(&E::file("ids", b"ids"));
    t
}

#[test]
fn big_ids_extreme_times_and_new_device_numbers() {
    let mut t = file_with_pax_ids("4294967294", "65536");
    // Base-256 uid and gid in the header.
    let mut h = common::header(b"b256", b'0', 0, &E::file("b256", b""), true);
    h[108..116].copy_from_slice(&[0x80, 0, 0, 0, 0, 0x01, 0x00, 0x01]);
    h[116..124].copy_from_slice(&[0x80, 0, 0, 0, 0, 0x12, 0x34, 0x56]);
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    t.buf.extend_from_slice(&h);
    t.pax(&[(b"mtime".to_vec(), b"-1.5".to_vec())]);
    t.add(&E::file("neg", b"neg"));
    for e in [
        E::file("ns", b"ns").mtime(1_700_000_000, 999_999_999),
        E::file("y2445", b"far").mtime(15_000_000_000, 5),
        E::file("y2318", b"band").mtime(11_000_000_000, 5),
        E::file("y3000", b"beyond").mtime(32_503_680_000, 5),
        E::file("y1800", b"old").mtime(-5_364_662_400, 5),
        E::file("y2300", b"2300").mtime(10_413_792_000, 123),
        E::dev("c", b'3', 300, 300),
        E::dev("b", b'4', 4095, 1_048_575),
        E::dev("small", b'3', 255, 255),
        E::dev("fifo", b'6', 0, 0).mode(0o1644),
    ] {
        t.add(&e);
    }
    check(
        &[t.finish()],
        &[
            "/ dir",
            "/ids file:ids o=4294967294:65536",
            "/b256 o=65537:1193046",
            "/neg t=-2.500000000",
            "/ns t=1700000000.999999999",
            // ext4 holds 1901-12-13 .. 2446-05-10, except the band that
            // e2fsck takes for mis-encoded pre-1970 times (2310-04-04 ..
            // 2378-04-22): clamped to its last second before.
            "/y2445 t=15000000000.000000005",
            "/y2318 t=10737418239.000000000",
            "/y3000 t=15032385535.000000000",
            "/y1800 t=-2147483648.000000000",
            "/y2300 t=10413792000.000000123",
            "/c char:300:300",
            "/b block:4095:1048575",
            "/small char:255:255",
            "/fifo fifo m=1644",
        ],
    );
    expect_error(&[tar(&[E::dev("big", b'3', 4096, 0)])], &["big", "device"]);
}

// ---- xattrs ----

#[test]
fn xattrs_inline_in_block_shared_empty_and_dropped() {
    let big = vec![0xab; 3000];
    let mid = vec![0xcd; 200];
    let mut entries = vec![
        E::file("inline", b"i")
            .xattr("user.a", b"1")
            .xattr("security.selinux", b"system_u:object_r:bin_t:s0\0"),
        E::file("block", b"b").xattr("user.big", &big),
        // An empty PAX value sets nothing (see empty_pax_values_...).
        E::file("empty", b"e")
            .xattr("user.empty", b"")
            .xattr("user.k", b"v"),
        E::file("dropped", b"d")
            .xattr("foo.bar", b"x")
            .xattr("system.nfs4_acl", b"y"),
        E::dir("d").xattr("trusted.overlay.opaque", b"y"),
    ];
    let mut many = E::file("many", b"m");
    for i in 0..60 {
        many = many.xattr(&format!("user.k{i:02}"), format!("v{i}").as_bytes());
    }
    entries.push(many);
    // More inodes share one xattr block than the kernel itself would put
    // on one (1024).
    for i in 0..1100 {
        entries.push(E::file(&format!("shared/{i:04}"), b"").xattr("user.mid", &mid));
    }
    let mut want: Vec<String> = vec![
        "/ dir".into(),
        "/inline x:user.a=31 x:security.selinux=73797374656d5f753a6f626a6563745f723a62696e5f743a733000".into(),
        format!("/block x:user.big={}", hex::encode(&big)),
        "/empty x:user.k=76".into(),
        "/dropped file:d".into(),
        "/d dir x:trusted.overlay.opaque=79".into(),
        "/shared dir".into(),
    ];
    let mut m = "/many file:m".to_string();
    for i in 0..60 {
        m.push_str(&format!(" x:user.k{i:02}={}", hex::encode(format!("v{i}"))));
    }
    want.push(m);
    for i in 0..1100 {
        want.push(format!("/shared/{i:04} x:user.mid={}", hex::encode(&mid)));
    }
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    check(&[tar(&entries)], &want);
}

#[test]
fn xattrs_over_one_block_are_an_error() {
    let e = error_of(&[tar(&[E::file("fat", b"").xattr("user.v", &vec![1; 4080])])]);
    assert!(e.contains("fat") && e.contains("xattrs need"), "{e}");
    let mut f = E::file("fat2", b"");
    for i in 0..5 {
        f = f.xattr(&format!("user.{i}"), &vec![1; 900]);
    }
    expect_error(&[tar(&[f])], &["fat2", "xattrs need"]);
    expect_error(
        &[tar(&[
            E::file("acl", b"").xattr("system.posix_acl_access", b"\x02\0\0\0junk")
        ])],
        &["acl", "not a valid POSIX ACL"],
    );
}

// ---- sizes and counts ----

const MAX_FILE: u64 = (1 << 44) - 4096;

#[test]
fn sparse_files_at_the_size_limits() {
    let mut t = TarBuilder::new();
    t.pax_sparse("1.0", "g4", 4 << 30, &[((4 << 30) - 3, vec![4; 3])]);
    t.pax_sparse("1.0", "g4p1", (4 << 30) + 1, &[(4 << 30, vec![5])]);
    t.pax_sparse("1.0", "max", MAX_FILE, &[(MAX_FILE - 4096, vec![6; 4096])]);
    t.pax_sparse("0.1", "holes", 1 << 20, &[]);
    let layers = [t.finish()];
    let dir = tempfile::tempdir().unwrap();
    let out = flatten_image(dir.path(), &plain(&layers)).unwrap();
    if !have("e2fsck") {
        return;
    }
    let Some(m) = Mount::new(&out) else { return };
    use std::os::unix::fs::FileExt;
    let tail = |name: &str, size: u64, n: usize| {
        let f = std::fs::File::open(m.path().join(name)).unwrap();
        assert_eq!(f.metadata().unwrap().len(), size, "{name}");
        let mut b = vec![0u8; n + 1];
        f.read_exact_at(&mut b, size - n as u64 - 1).unwrap();
        b
    };
    assert_eq!(tail("g4", 4 << 30, 3), [0, 4, 4, 4]);
    assert_eq!(tail("g4p1", (4 << 30) + 1, 1), [0, 5]);
    let mut want = vec![6u8; 4097];
    want[0] = 0;
    assert_eq!(tail("max", MAX_FILE, 4096), want);
    assert_eq!(
        std::fs::read(m.path().join("holes")).unwrap(),
        vec![0; 1 << 20]
    );
    // Blocks allocated: only the data.
    let blocks = |n: &str| std::fs::metadata(m.path().join(n)).unwrap().blocks();
    assert_eq!(
        (blocks("g4"), blocks("g4p1"), blocks("max"), blocks("holes")),
        (8, 8, 8, 0)
    );

    let mut t = TarBuilder::new();
    t.pax_sparse("1.0", "too-big", MAX_FILE + 1, &[(0, vec![1])]);
    expect_error(&[t.finish()], &["too-big", "exceeds ext4's limit"]);
}

#[test]
fn more_hard_links_than_ext4_allows_is_an_error() {
    let mut t = TarBuilder::new();
    t.add(&E::file("f", b"x"));
    for i in 0..65_000 {
        t.add(&E::hardlink(&format!("l{i}"), "f"));
    }
    expect_error(
        &[t.finish()],
        &["more than 65000 hard links", "cannot represent \"/"],
    );
}

#[test]
fn many_empty_directories_and_a_two_level_htree_of_long_names() {
    let mut entries = Vec::new();
    let mut want: Vec<String> = vec!["/ dir n=12003".into(), "/long dir".into()];
    for i in 0..12_000 {
        entries.push(E::dir(&format!("d{i:05}")));
        want.push(format!("/d{i:05} dir n=2"));
    }
    // 200-byte names: 19 per block, 632 leaves: more than the root's 508
    // index slots, so the tree needs interior index blocks.
    for i in 0..12_000 {
        let name = format!("{i:05}{}", "x".repeat(195));
        entries.push(E::file(&format!("long/{name}"), b""));
        want.push(format!("/long/{name} file:"));
    }
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    check(&[tar(&entries)], &want);
}

#[test]
fn paths_longer_than_path_max() {
    // 30 levels of 200-byte names: 6,030 bytes, beyond PATH_MAX (4096).
    let comps: Vec<String> = (0..30)
        .map(|i| format!("{i:02}{}", "p".repeat(198)))
        .collect();
    let path = comps.join("/");
    let layers = [tar(&[E::file(&format!("{path}/leaf"), b"deep")])];
    let dir = tempfile::tempdir().unwrap();
    let out = flatten_image(dir.path(), &plain(&layers)).unwrap();
    if !have("e2fsck") {
        return;
    }
    let Some(m) = Mount::new(&out) else { return };
    // Walk with openat: the absolute path is too long for one syscall.
    // SAFETY: the path is a C string; the descriptor is closed below.
    let mut fd = unsafe {
        libc::open(
            std::ffi::CString::new(m.path().as_os_str().as_bytes())
                .unwrap()
                .as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY,
        )
    };
    assert!(fd >= 0);
    for c in &comps {
        let name = std::ffi::CString::new(c.as_str()).unwrap();
        // SAFETY: fd is an open directory and name a C string.
        let next = unsafe {
            libc::openat(
                fd,
                name.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )
        };
        assert!(next >= 0, "openat {c}");
        // SAFETY: fd was opened above.
        unsafe { libc::close(fd) };
        fd = next;
    }
    let leaf = std::ffi::CString::new("leaf").unwrap();
    // SAFETY: as above.
    let f = unsafe { libc::openat(fd, leaf.as_ptr(), libc::O_RDONLY) };
    assert!(f >= 0);
    let mut buf = [0u8; 16];
    // SAFETY: buf is live for its length.
    let n = unsafe { libc::read(f, buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"deep");
    // SAFETY: both were opened above.
    unsafe {
        libc::close(f);
        libc::close(fd);
    }
}

// ---- degenerate images and layers ----

#[test]
fn zero_layers_only_whiteouts_and_empty_layers() {
    check_raw(&[], &["/ dir m=755 o=0:0 t=0.000000000 n=2"]);
    // Compressed empty streams: no tar blocks at all.
    check_raw(
        &[(gzip(&[]), GZIP, Vec::new()), (zstd(&[]), ZSTD, Vec::new())],
        &["/ dir n=2"],
    );
    check(
        &[
            tar(&[E::file("a", b"a")]),
            tar(&[
                E::whiteout(".wh.a"),
                E::whiteout(".wh.missing"),
                E::whiteout("no/such/.wh..wh..opq"),
            ]),
            vec![0; 1024],
            Vec::new(),
            vec![0; 512],
        ],
        &["/ dir n=2"],
    );
}

// ---- compression and tar format quirks ----

fn gzip(b: &[u8]) -> Vec<u8> {
    common::compress(b, common::Comp::Gzip)
}

fn zstd(b: &[u8]) -> Vec<u8> {
    common::compress(b, common::Comp::Zstd)
}

/// A zstd skippable frame (magic 0x184D2A50..5F) with `n` payload bytes.
fn skippable(magic_low: u8, n: u32) -> Vec<u8> {
    let mut v = vec![0x50 | (magic_low & 0xf), 0x2a, 0x4d, 0x18];
    v.extend_from_slice(&n.to_le_bytes());
    v.extend(std::iter::repeat_n(0x55, n as usize));
    v
}

#[test]
fn multi_member_gzip_and_multi_frame_zstd_with_skippable_frames() {
    let a = tar(&[E::file("a", b"a")]);
    // Split one tar across members / frames in the middle of a header.
    let (x, y) = a.split_at(700);
    let mut gz = gzip(x);
    // The second member with the optional header fields (name, comment,
    // extra field, mtime).
    let mut w = flate2::GzBuilder::new()
        .filename("layer.tar")
        .comment("a comment")
        .extra(vec![b'A', b'B', 2, 0, 1, 2])
        .mtime(1_700_000_000)
        .write(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut w, y).unwrap();
    gz.extend(w.finish().unwrap());
    let b = tar(&[E::file("b", b"b")]);
    let (x, y) = b.split_at(300);
    let mut zs = skippable(0, 16);
    zs.extend(zstd(x));
    zs.extend(skippable(0xf, 0));
    zs.extend(zstd(y));
    zs.extend(skippable(3, 5));
    check_raw(
        &[(gz, GZIP, a), (zs, ZSTD, b)],
        &["/ dir", "/a file:a", "/b file:b"],
    );
}

#[test]
fn gzip_data_under_a_plain_media_type_is_an_error() {
    let a = tar(&[E::file("a", b"a")]);
    let e = flatten_error(&[(gzip(&a), TAR, a)]);
    assert!(
        e.contains("media type says tar but the data is gzip"),
        "{e}"
    );
}

#[test]
fn bytes_after_the_end_of_archive_are_ignored() {
    // Docker and containerd stop at the two zero blocks; the diff_id still
    // covers everything after them.
    let mut a = tar(&[E::file("a", b"a")]);
    a.extend_from_slice(b"trailing garbage that is not a tar header");
    a.extend(tar(&[E::file("hidden", b"after the end")]));
    check(&[a], &["/ dir", "/a file:a"]);
}

#[test]
fn a_single_zero_block_followed_by_more_headers_is_an_error() {
    // Go's archive/tar (containerd, umoci) rejects a lone zero block that
    // is followed by anything but a second zero block; the entries after
    // it must not vanish silently.
    let mut a = TarBuilder::new();
    a.add(&E::file("a", b"a"));
    a.buf.extend_from_slice(&[0; 512]);
    a.add(&E::file("b", b"b"));
    expect_error(&[a.finish()], &["zero block"]);
    // A lone zero block at the very end is a clean end.
    let mut a = TarBuilder::new();
    a.add(&E::file("a", b"a"));
    a.buf.extend_from_slice(&[0; 512]);
    check(&[a.buf], &["/ dir", "/a file:a"]);
}

#[test]
fn pax_records_unknown_keys_size_override_and_gnu_long_names() {
    let mut t = TarBuilder::new();
    t.pax(&[
        (b"LIBARCHIVE.creationtime".to_vec(), b"1".to_vec()),
        (b"comment".to_vec(), b"whatever".to_vec()),
        (b"SCHILY.fflags".to_vec(), b"".to_vec()),
        (b"size".to_vec(), b"5".to_vec()),
    ]);
    // The header says 0 bytes; PAX says 5.
    t.buf.extend(raw_entry(
        common::header(b"sized", b'0', 0, &E::file("sized", b""), false),
        b"12345",
    ));
    // A GNU long name and a PAX path for the same entry: GNU wins, as in
    // Go's archive/tar (containerd, umoci).
    t.pax(&[(b"path".to_vec(), b"pax-name".to_vec())]);
    t.gnu_long(b'L', b"gnu-name");
    t.buf.extend(raw_entry(
        common::header(b"short", b'0', 1, &E::file("short", b""), true),
        b"g",
    ));
    // GNU long link on a hard link.
    let long = format!("{}/target", "t".repeat(120));
    t.add(&E::file(&long, b"long"));
    t.add(&E::hardlink("link", &long).gnu());
    check(
        &[t.finish()],
        &[
            "/ dir",
            "/sized file:12345",
            "/gnu-name file:g",
            &format!("/{}", "t".repeat(120)),
            &format!("/{long} file:long n=2"),
            "/link file:long n=2",
        ],
    );
}

#[test]
fn xattrs_that_special_files_cannot_carry_are_dropped() {
    // user.* only on files and directories, ACLs not on symlinks (the
    // kernel would list them but refuse to read them); symlinks are 0777.
    let acl = hex::encode(common::acl_xattr());
    check(
        &[tar(&[
            E::symlink("s", "t")
                .mode(0o644)
                .xattr("user.a", b"1")
                .xattr("trusted.b", b"2")
                .xattr("security.c", b"3")
                .xattr("system.posix_acl_access", &common::acl_xattr()),
            E::dev("c", b'3', 1, 3)
                .xattr("user.a", b"1")
                .xattr("system.posix_acl_access", &common::acl_xattr()),
            E::dev("p", b'6', 0, 0)
                .xattr("user.a", b"1")
                .xattr("trusted.t", b"t"),
            E::file("f", b"f").xattr("user.a", b"1"),
            E::hardlink("h", "f"),
        ])],
        &[
            "/ dir",
            "/s link:t m=777 x:security.c=33 x:trusted.b=32",
            &format!("/c char:1:3 x:system.posix_acl_access={acl}"),
            "/p fifo x:trusted.t=74",
            "/f file:f x:user.a=31 n=2",
            "/h file:f x:user.a=31 n=2",
        ],
    );
    // Nothing else: the lines above list every xattr each path has.
    let dir = tempfile::tempdir().unwrap();
    let out = flatten_image(
        dir.path(),
        &plain(&[tar(&[E::symlink("s", "t").xattr("user.a", b"1")])]),
    )
    .unwrap();
    if let Some(m) = have("e2fsck").then(|| Mount::new(&out)).flatten() {
        assert!(xattrs(&m.path().join("s")).is_empty());
    }
}

#[test]
fn xattr_names_the_kernel_cannot_handle_are_errors() {
    let mut t = TarBuilder::new();
    t.pax(&[(b"SCHILY.xattr.user.a\0b".to_vec(), b"v".to_vec())]);
    t.add(&E::file("nul", b"n"));
    expect_error(&[t.finish()], &["\"nul\"", "contains a NUL byte"]);
    expect_error(
        &[tar(&[E::file("e", b"").xattr("user.", b"v")])],
        &["\"/e\"", "empty suffix"],
    );
    // XATTR_NAME_MAX (255) counts the prefix.
    let name = format!("user.{}", "k".repeat(251));
    expect_error(
        &[tar(&[E::file("l", b"").xattr(&name, b"v")])],
        &["\"/l\"", "256 bytes; Linux allows 255"],
    );
    let name = format!("user.{}", "k".repeat(250));
    check(
        &[tar(&[E::file("ok", b"").xattr(&name, b"v")])],
        &["/ dir", &format!("/ok x:{name}=76")],
    );
}

#[test]
fn symlink_loops_and_self_links_are_errors() {
    expect_error(
        &[tar(&[
            E::symlink("l1", "l2"),
            E::symlink("l2", "/l1/"),
            E::file("l2/x", b""),
        ])],
        &["\"l2/x\"", "too many levels of symbolic links"],
    );
    expect_error(
        &[tar(&[E::hardlink("a", "a")])],
        &["hard link to missing target"],
    );
}

#[test]
fn header_only_entries_with_a_size_field() {
    let mut t = TarBuilder::new();
    t.add(&E::file("target", b"t"));
    // A symlink and a directory whose headers claim data that is not
    // there (Go's archive/tar and Python's tarfile read no data)...
    let e = E::symlink("sym", "target");
    t.buf
        .extend_from_slice(&common::header(b"sym", b'2', 600, &e, false));
    t.buf
        .extend_from_slice(&common::header(b"dir", b'5', 5000, &E::dir("dir"), false));
    // ...and a hard link that does carry its data (POSIX pax allows it).
    let e = E::hardlink("link", "target");
    t.buf.extend(raw_entry(
        common::header(b"link", b'1', 5, &e, false),
        b"hello",
    ));
    // Two extended headers in a row: the second replaces the first.
    t.pax(&[
        (b"path".to_vec(), b"first".to_vec()),
        (b"uid".to_vec(), b"7".to_vec()),
    ]);
    t.pax(&[(b"mtime".to_vec(), b"5.25".to_vec())]);
    t.add(&E::file("second", b"2"));
    // A header-only entry with a size right before the end.
    t.buf.extend_from_slice(&common::header(
        b"fifo",
        b'6',
        1,
        &E::dev("fifo", b'6', 0, 0),
        false,
    ));
    check(
        &[t.finish()],
        &[
            "/ dir",
            "/target file:t n=2 g=/link",
            "/link file:t n=2 g=/link",
            "/sym link:target",
            "/dir dir",
            "/second file:2 o=0:0 t=5.250000000",
            "/fifo fifo",
        ],
    );
}

// ---- differential: random stacks against umoci ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const RPATHS: &[&str] = &[
    "a",
    "b",
    "c",
    "a/x",
    "a/y",
    "b/x",
    "b/y",
    "a/x/z",
    "b/y/z",
    "c/d",
    "c/d/e",
    "a/y/w",
    "b/caf\u{e9}",
    "c/LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL",
    "c/LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL/m",
];

/// A random layer: at most one entry per path, written in name order (so
/// that tar order and the flattener's order agree; only same-layer
/// conflicts could tell them apart, and those are order-dependent by
/// nature).
/// A sparse file: apparent size and (offset, bytes) runs.
type SparseSpec = (u64, Vec<(u64, Vec<u8>)>);

fn random_layer(r: &mut Rng, files: &mut Vec<&'static str>) -> Vec<u8> {
    let mut entries: BTreeMap<Vec<u8>, E> = BTreeMap::new();
    let mut sparse: BTreeMap<Vec<u8>, SparseSpec> = BTreeMap::new();
    let mut used = std::collections::BTreeSet::new();
    for _ in 0..r.below(9) {
        let path = RPATHS[r.below(RPATHS.len())];
        if !used.insert(path) {
            continue;
        }
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        let mode = [0o644, 0o755, 0o4750, 0o1777, 0o600][r.below(5)];
        // 1906 .. 2038: umoci mangles later times (the hand-written cases
        // above cover them).
        let t = (r.next() % 4_100_000_000) as i64 - 2_000_000_000;
        let ns = (r.next() % 1_000_000_000) as u32;
        let (uid, gid) = ([0, 1, 1000, 70000][r.below(4)], [0, 5, 65534][r.below(3)]);
        let target = RPATHS[r.below(RPATHS.len())];
        // Paths that other paths run through are mostly directories (else
        // most stacks fail, for umoci too, on a parent that is a file).
        let parent = RPATHS.iter().any(|p| p.starts_with(&format!("{path}/")));
        let pick = if parent && r.below(3) != 0 {
            4
        } else {
            r.below(13)
        };
        if pick == 12 {
            // A PAX 1.0 sparse file: holes and a few runs.
            let size = [4096u64, 70_000, 3 << 20][r.below(3)];
            let mut runs = Vec::new();
            let mut at = r.below(3) as u64 * 4096;
            while at < size && runs.len() < 3 {
                let len = (1 + r.below(5000) as u64).min(size - at);
                runs.push((at, vec![1 + r.below(255) as u8; len as usize]));
                at += len + r.below(3) as u64 * 8192;
            }
            sparse.insert(path.as_bytes().to_vec(), (size, runs));
            files.push(path);
            continue;
        }
        let mut e = match pick {
            0..=3 => {
                let n = [0, 1, 4095, 4097, 70_000, 1 << 20][r.below(6)];
                E::file(path, &vec![r.below(256) as u8; n])
            }
            4 | 5 => E::dir(path),
            6 => E::symlink(path, &format!("{}{target}", ["", "/", "../"][r.below(3)])),
            7 => E::whiteout(&format!("{dir}.wh.{name}")),
            8 => E::whiteout(&format!("{path}/.wh..wh..opq")),
            // Mostly to a file made before (else most stacks just fail).
            9 if !files.is_empty() => E::hardlink(path, files[r.below(files.len())]),
            9 => E::hardlink(path, target),
            10 => E::dev(path, b'6', 0, 0),
            _ => E::dev(
                path,
                [b'3', b'4'][r.below(2)],
                r.below(300) as u32,
                r.below(300) as u32,
            ),
        };
        if e.typeflag == b'0' && !name.starts_with(".wh.") {
            files.push(path);
        }
        if e.typeflag != b'1' {
            e = e.mode(mode).owner(uid, gid).mtime(t, ns);
            if r.below(3) == 0 && matches!(e.typeflag, b'0' | b'5') {
                e = e.xattr("user.k", format!("v{}", r.below(3)).as_bytes());
            }
            if r.below(5) == 0 {
                e = e.xattr("trusted.t", &vec![r.below(256) as u8; r.below(300)]);
            }
        }
        if r.below(2) == 0 {
            e = e.gnu();
        }
        entries.insert(e.path.clone(), e);
    }
    // A hard link to a path this layer writes later in tar order: umoci
    // links the lower file, the flattener (order-independent) the layer's
    // own; a generated layer never does that (tar writes the target first).
    let keys: Vec<Vec<u8>> = entries.keys().chain(sparse.keys()).cloned().collect();
    entries.retain(|p, e| e.typeflag != b'1' || !keys.iter().any(|k| k > p && *k == e.link));
    let mut all: Vec<&Vec<u8>> = entries.keys().chain(sparse.keys()).collect();
    all.sort();
    let mut t = TarBuilder::new();
    for k in all {
        match (entries.get(k), sparse.get(k)) {
            (Some(e), _) => {
                t.add(e);
            }
            (None, Some((size, runs))) => {
                t.pax_sparse("1.0", &String::from_utf8_lossy(k), *size, runs);
            }
            (None, None) => unreachable!(),
        }
    }
    t.finish()
}

fn umoci_unpack(layout: &Path, bundle: &Path) -> Result<(), String> {
    let out = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(bundle)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn random_stacks_match_umoci() {
    if !have("e2fsck") || !have("umoci") {
        return;
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut compared = 0;
    let mut both_failed = 0;
    let mut only_umoci_failed = 0;
    // ADV_SEEDS=N runs more stacks (a longer campaign than CI's).
    let seeds: u64 = std::env::var("ADV_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    for seed in 1..=seeds {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut files = Vec::new();
        let layers: Vec<Vec<u8>> = (0..1 + r.below(3))
            .map(|_| random_layer(&mut r, &mut files))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        common::oci_layout(
            &layout,
            &[(
                "t",
                layers
                    .iter()
                    .map(|t| {
                        // (umoci 0.4 has no zstd.)
                        let c = [common::Comp::None, common::Comp::Gzip];
                        (t.clone(), c[r.below(2)])
                    })
                    .collect(),
            )],
        );
        let img = ImageRef::parse(&format!("oci:{}:t", layout.display())).unwrap();
        let out = dir.path().join("out.ext4");
        if std::env::var("ADV_DUMP").is_ok_and(|v| v == seed.to_string()) {
            for (i, l) in layers.iter().enumerate() {
                std::fs::write(format!("/tmp/adv/layer{i}.tar"), l).unwrap();
            }
        }
        let ours = flatten(&img, &FlattenOptions::default(), &out);
        let bundle = dir.path().join("bundle");
        let theirs = umoci_unpack(&layout, &bundle);
        match (&ours, &theirs) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(_)) => {
                if std::env::var("ADV_VERBOSE").is_ok() {
                    println!("seed {seed}: both fail; ours: {e}");
                }
                both_failed += 1;
                continue;
            }
            // umoci is stricter in places (e.g. a hard link whose target
            // is a symlink to a directory); a success of ours is still
            // checked by e2fsck and the mount below.
            (Ok(_), Err(e)) => {
                if std::env::var("ADV_VERBOSE").is_ok() {
                    println!("seed {seed}: only umoci fails: {}", e.trim());
                }
                only_umoci_failed += 1;
                e2fsck(&out).unwrap();
                continue;
            }
            (Err(e), Ok(())) => panic!("seed {seed}: umoci unpacks, flatten fails: {e}"),
        }
        e2fsck(&out).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let Some(m) = Mount::new(&out) else { return };
        let got = listing(m.path());
        drop(m);
        let mut want = listing(&bundle.join("rootfs"));
        // Directories no layer lists get umoci's clock, ours the epoch; and
        // umoci leaves the clock on a listed directory in which it created
        // a missing parent (a umoci gap: the layer gives its mtime).
        for (path, line) in &got {
            let clocked = |w: &str| {
                w.starts_with("dir ")
                    && w.split(' ').any(|t| {
                        t.strip_prefix("t=")
                            .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
                            .is_some_and(|sec| sec >= started - 5)
                    })
            };
            let implicit = line.starts_with("dir ") && line.contains(" t=0.000000000 ");
            if (implicit || want.get(path).is_some_and(|w| clocked(w)))
                && let Some(w) = want.get_mut(path)
            {
                let start = w.find(" t=").unwrap();
                let end = start + 1 + w[start + 1..].find(' ').unwrap();
                let ours_t = &line[line.find(" t=").unwrap()..];
                let ours_t = &ours_t[..1 + ours_t[1..].find(' ').unwrap()];
                w.replace_range(start..end, ours_t);
            }
        }
        let mut problems = Vec::new();
        for (p, l) in &want {
            match got.get(p) {
                Some(g) if g == l => {}
                Some(g) => problems.push(format!("{p}:\n  umoci {l}\n  ours  {g}")),
                None => problems.push(format!("{p}: only in umoci: {l}")),
            }
        }
        for (p, g) in &got {
            if !want.contains_key(p) {
                problems.push(format!("{p}: only in ours: {g}"));
            }
        }
        assert!(problems.is_empty(), "seed {seed}:\n{}", problems.join("\n"));
        compared += 1;
    }
    println!(
        "compared {compared}, both failed {both_failed}, only umoci failed {only_umoci_failed}"
    );
    assert!(compared >= 30, "only {compared} stacks compared");
}

#[test]
fn empty_pax_values_keep_the_header_fields() {
    // An empty value deletes the keyword (POSIX), so the header field
    // counts (Go's archive/tar: "keep the original USTAR value").
    let mut t = TarBuilder::new();
    t.pax(&[
        (b"path".to_vec(), b"".to_vec()),
        (b"uid".to_vec(), b"".to_vec()),
        (b"mtime".to_vec(), b"".to_vec()),
        (b"SCHILY.xattr.user.e".to_vec(), b"".to_vec()),
        (b"SCHILY.xattr.user.k".to_vec(), b"v".to_vec()),
    ]);
    t.add(&E::file("header-name", b"h").owner(3, 4).mtime(1234, 0));
    // A global value, deleted again by an entry's empty one.
    let mut g = TarBuilder::new();
    g.pax(&[(b"uid".to_vec(), b"77".to_vec())]);
    g.buf[156] = b'g';
    g.buf[148..156].copy_from_slice(b"        ");
    let sum: u64 = g.buf[..512].iter().map(|&b| u64::from(b)).sum();
    g.buf[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    t.buf.extend_from_slice(&g.buf);
    t.add(&E::file("global", b"g").owner(5, 5));
    t.pax(&[(b"uid".to_vec(), b"".to_vec())]);
    t.add(&E::file("deleted", b"d").owner(6, 6));
    check(
        &[t.finish()],
        &[
            "/ dir",
            "/header-name file:h o=3:4 t=1234.000000000 x:user.k=76",
            "/global o=77:5",
            "/deleted o=6:6",
        ],
    );
}

#[test]
fn opaque_root_directory_recreate_and_repeated_layers() {
    let base = tar(&[
        E::dir("d"),
        E::file("d/old", b"old"),
        E::file("top", b"top"),
    ]);
    let same = tar(&[E::file("same", b"s")]);
    let mut layers = vec![base];
    // The same blob 130 times (beyond Docker's 127-layer limit).
    layers.extend(std::iter::repeat_n(same, 130));
    layers.push(tar(&[
        // Whiteout and re-create of a directory in one layer.
        E::whiteout(".wh.d"),
        E::dir("d").mode(0o700),
        E::file("d/new", b"new"),
    ]));
    check(
        &layers,
        &[
            "/ dir",
            "/d dir m=700",
            "/d/new file:new",
            "/top file:top",
            "/same file:s",
        ],
    );
    // An opaque marker at the root hides every lower entry.
    check(
        &[
            tar(&[E::file("a", b"a"), E::dir("b")]),
            tar(&[E::whiteout(".wh..wh..opq"), E::file("c", b"c")]),
        ],
        &["/ dir", "/c file:c"],
    );
}

/// Flattens the docker-archive at `path` (files `/a` and `/b`), checks it
/// with e2fsck and the mounted tree.
fn archive_holds_a_and_b(path: &Path) {
    let img = ImageRef::parse(&format!("docker-archive:{}", path.display())).unwrap();
    let out = path.with_extension("ext4");
    flatten(&img, &FlattenOptions::default(), &out).unwrap();
    if !have("e2fsck") {
        return;
    }
    e2fsck(&out).unwrap();
    let Some(m) = Mount::new(&out) else { return };
    let got = listing(m.path());
    assert_eq!(got.keys().collect::<Vec<_>>(), ["/", "/a", "/b"]);
}

#[test]
fn docker_archive_with_gzip_and_plain_layers() {
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![tar(&[E::file("a", b"a")]), tar(&[E::file("b", b"b")])];
    let path = dir.path().join("img.tar");
    common::docker_archive(&path, &layers, true);
    archive_holds_a_and_b(&path);
}

#[test]
fn hard_links_to_special_files_and_link_headers_are_ignored() {
    check(
        &[
            tar(&[
                E::dev("fifo", b'6', 0, 0).mode(0o640),
                E::dev("null", b'3', 1, 3).mode(0o666),
                E::file("f", b"f").xattr("user.a", b"1").owner(1, 2),
                E::hardlink("fifo2", "fifo"),
                E::hardlink("null2", "null"),
                // The link's own mode, owner, time and xattrs do not count.
                E::hardlink("f2", "f")
                    .mode(0o777)
                    .owner(9, 9)
                    .mtime(5, 0)
                    .xattr("user.b", b"2"),
            ]),
            // A link in an upper layer to a lower hard-link group.
            tar(&[E::hardlink("f3", "f2")]),
        ],
        &[
            "/ dir",
            "/fifo fifo m=640 n=2 g=/fifo",
            "/fifo2 fifo m=640 n=2 g=/fifo",
            "/null char:1:3 n=2 g=/null",
            "/null2 char:1:3 n=2 g=/null",
            "/f file:f m=644 o=1:2 t=1700000000.000000000 n=3 g=/f x:user.a=31",
            "/f2 file:f n=3 g=/f x:user.a=31",
            "/f3 file:f n=3 g=/f x:user.a=31",
        ],
    );
}

#[test]
fn xattr_block_and_inode_space_boundaries() {
    // One block: 32-byte header, a 20-byte entry for `user.v`, the 4-byte
    // terminator: 4,040 value bytes fit, 4,041 do not.
    let fits = vec![7u8; 4040];
    // After the magic, the inode has 92 bytes: a 20-byte entry, the
    // terminator and a value of up to 68 bytes; values of 56 to 72 bytes
    // cross from the inode to a block.
    let mut entries = vec![E::file("block-full", b"").xattr("user.v", &fits)];
    let mut want = vec![
        "/ dir".to_string(),
        format!("/block-full x:user.v={}", hex::encode(&fits)),
    ];
    for n in 56..=72 {
        let v = vec![n as u8; n];
        entries.push(E::file(&format!("inode{n}"), b"").xattr("user.v", &v));
        want.push(format!("/inode{n} x:user.v={}", hex::encode(&v)));
    }
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    check(&[tar(&entries)], &want);
    expect_error(
        &[tar(&[E::file("over", b"").xattr("user.v", &[7; 4041])])],
        &["\"/over\"", "xattrs need"],
    );
}

#[test]
fn id_minus_one_is_root() {
    // chown(2) reads 2^32-1 as "unchanged": unpackers leave root.
    let mut t = file_with_pax_ids("4294967295", "4294967295");
    check(&[t.finish()], &["/ dir", "/ids o=0:0"]);
}

/// 100,000 names of 255 bytes in one directory (6,452 leaf blocks under a
/// two-level htree); every 997th looked up by name through the kernel.
#[test]
fn directory_of_100000_names_of_255_bytes() {
    let mut t = TarBuilder::new();
    t.add(&E::dir("big"));
    for i in 0..100_000 {
        let name = format!("big/{i:06}{}", "n".repeat(249));
        t.add(&E::file(&name, b""));
    }
    let layers = [t.finish()];
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = flatten_image(dir.path(), &plain(&layers)).unwrap();
    println!("flattened and checked in {:?}", started.elapsed());
    if !have("e2fsck") {
        return;
    }
    let Some(m) = Mount::new(&out) else { return };
    let names = std::fs::read_dir(m.path().join("big")).unwrap().count();
    assert_eq!(names, 100_000);
    for i in (0..100_000).step_by(997) {
        let name = format!("{i:06}{}", "n".repeat(249));
        assert!(m.path().join("big").join(name).exists(), "{i}");
    }
}

#[test]
fn docker_archive_with_a_symlinked_duplicate_layer() {
    // `docker save` before Docker 25 stores a layer that occurs twice once,
    // and the second `layer.tar` as a symlink to the first.
    let layer = tar(&[E::file("a", b"a")]);
    let other = tar(&[E::whiteout(".wh.a"), E::file("b", b"b")]);
    let layers = vec![layer.clone(), other, layer];
    let config = common::config_for(&layers);
    let chex = sha256_hex(&config);
    let mut t = TarBuilder::new();
    t.add(&E::file("l0/layer.tar", &layers[0]));
    t.add(&E::file("l1/layer.tar", &layers[1]));
    t.add(&E::symlink("l2/layer.tar", "../l0/layer.tar"));
    t.add(&E::hardlink("l3/layer.tar", "l2/layer.tar"));
    t.add(&E::file(&format!("{chex}.json"), &config));
    let manifest = serde_json::json!([{"Config": format!("{chex}.json"), "RepoTags": ["t:1"],
        "Layers": ["l0/layer.tar", "l1/layer.tar", "l3/layer.tar"]}]);
    t.add(&E::file(
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.tar");
    std::fs::write(&path, t.finish()).unwrap();
    archive_holds_a_and_b(&path);
}

#[test]
fn whiteouts_under_a_directory_that_replaces_a_symlink() {
    // The upper layer turns the symlink `lib` into a directory (overlayfs
    // diffs mark such a directory opaque). Its whiteouts and opaque marker
    // concern the new directory: they must not reach through the lower
    // symlink into usr/lib.
    let layers = [
        tar(&[
            E::file("usr/lib/keep", b"keep"),
            E::file("usr/lib/also", b"also"),
            E::symlink("lib", "usr/lib"),
            E::symlink("lib2", "usr/lib"),
        ]),
        tar(&[
            E::dir("lib"),
            E::whiteout("lib/.wh..wh..opq"),
            E::whiteout("lib/.wh.keep"),
            E::file("lib/new", b"new"),
            E::file("lib2", b"now a file"),
            E::whiteout("lib2/.wh.also"),
        ]),
    ];
    let want = [
        "/ dir",
        "/usr dir",
        "/usr/lib dir",
        "/usr/lib/keep file:keep",
        "/usr/lib/also file:also",
        "/lib dir",
        "/lib/new file:new",
        "/lib2 file:now\\x20a\\x20file",
    ];
    check(&layers, &want);
    // umoci (tar order) agrees.
    if !have("umoci") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    common::oci_layout(
        &layout,
        &[(
            "t",
            layers
                .iter()
                .map(|t| (t.clone(), common::Comp::None))
                .collect(),
        )],
    );
    umoci_unpack(&layout, &dir.path().join("bundle")).unwrap();
    let got = listing(&dir.path().join("bundle/rootfs"));
    let mut paths: Vec<&str> = want.iter().map(|w| w.split(' ').next().unwrap()).collect();
    paths.sort();
    assert_eq!(got.keys().map(String::as_str).collect::<Vec<_>>(), paths);
}

/// `lost+found` is the image's own business: a file, a symlink or a
/// directory of that name passes e2fsck and mounts as given.
#[test]
fn lost_and_found_from_a_layer() {
    check(
        &[tar(&[E::file("lost+found", b"not a dir")])],
        &["/ dir", "/lost+found file:not\\x20a\\x20dir"],
    );
    check(
        &[tar(&[E::symlink("lost+found", "/tmp")])],
        &["/ dir", "/lost+found link:/tmp"],
    );
    check(
        &[tar(&[
            E::dir("lost+found").mode(0o700),
            E::file("lost+found/x", b"x"),
        ])],
        &["/ dir", "/lost+found dir", "/lost+found/x file:x"],
    );
}

/// A dense file just over one extent's 128 MiB (32,768 blocks), with a
/// partial last block.
#[test]
fn dense_file_over_one_extent() {
    let n = (128 << 20) + 3 * 4096 + 17;
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let layers = [tar(&[E::file("big", &data)])];
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let out = flatten_image(dir.path(), &plain(&layers)).unwrap();
    println!("took {:?}", t.elapsed());
    if !have("e2fsck") {
        return;
    }
    let Some(m) = Mount::new(&out) else { return };
    assert!(std::fs::read(m.path().join("big")).unwrap() == data);
}
