//! Tar input that GNU tar, Go's archive/tar and Python's tarfile all accept
//! is accepted, and read as they read it; what they all refuse is refused.
//!
//! The same hand-made bytes are read by the flattener, extracted by GNU tar
//! (`tar`) and listed by Python's tarfile (`python3`), and the results are
//! compared. Go is not installed here; what its archive/tar does is noted
//! beside each case (from `archive/tar/reader.go`: PAX numbers go through
//! `strconv.ParseInt(v, 10, 64)`, record lengths too).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::fs::have;
use common::{E, header, sha256_hex};
use flattener::oci::MemorySource;
use flattener::tree::{NodeKind, Tree};
use flattener::{FlattenOptions, build_tree};

/// What a reader saw of one regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    path: String,
    size: u64,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    /// SHA-256 of the contents.
    sha: String,
}

/// A PAX record whose length field carries `zeros` leading zeros (Go,
/// GNU tar and Python parse the length as a decimal number).
fn record(key: &str, value: &str, zeros: usize) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut digits = 1;
    let len = loop {
        let len = zeros + digits + rest;
        if len.to_string().len() == digits {
            break len;
        }
        digits += 1;
    };
    let r = format!("{}{len} {key}={value}\n", "0".repeat(zeros)).into_bytes();
    assert_eq!(r.len(), len);
    r
}

fn padded(mut b: Vec<u8>) -> Vec<u8> {
    b.resize(b.len().div_ceil(512) * 512, 0);
    b
}

/// A ustar entry preceded by a PAX header of `records`; the ustar header
/// says `header_size` (PAX `size` overrides it) and owner 0:0, mtime 1.
fn entry(path: &str, records: &[Vec<u8>], header_size: u64, data: &[u8]) -> Vec<u8> {
    let pax: Vec<u8> = records.concat();
    let mut out = header(
        b"PaxHeaders/x",
        b'x',
        pax.len() as u64,
        &E::file("x", b""),
        false,
    )
    .to_vec();
    out.extend(padded(pax));
    let e = E::file(path, b"").mtime(1, 0);
    out.extend(header(path.as_bytes(), b'0', header_size, &e, false));
    out.extend(padded(data.to_vec()));
    out
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut t = entries.concat();
    t.extend([0u8; 1024]);
    t
}

/// The flattener's view of the regular files `paths`.
fn ours(tar: &[u8], paths: &[&str]) -> Result<Vec<Seen>, String> {
    let dir = tempfile::tempdir().unwrap();
    let src = MemorySource::from_tars(vec![tar.to_vec()]);
    let f = build_tree(&src, &FlattenOptions::default(), dir.path()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for p in paths {
        let NodeKind::Directory { entries } = &f.tree.node(Tree::ROOT).kind else {
            unreachable!("the root is a directory")
        };
        let id = entries[p.as_bytes()];
        let n = f.tree.node(id);
        let NodeKind::Regular { file } = n.kind else {
            panic!("{p} is not a file")
        };
        let data = common::file_bytes(&f.spool, f.tree.file(file));
        out.push(Seen {
            path: (*p).to_owned(),
            size: f.tree.file(file).size,
            uid: n.meta.uid,
            gid: n.meta.gid,
            mtime: (n.meta.mtime.sec, n.meta.mtime.nsec),
            sha: sha256_hex(&data),
        });
    }
    Ok(out)
}

/// GNU tar's view: extracted as root (owners kept), then stat'ed.
fn gnu_tar(tar: &Path, paths: &[&str]) -> Result<Vec<Seen>, String> {
    let out = tempfile::tempdir().unwrap();
    let r = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(out.path())
        .arg("--numeric-owner")
        .output()
        .unwrap();
    if !r.status.success() {
        return Err(String::from_utf8_lossy(&r.stderr).into_owned());
    }
    Ok(paths
        .iter()
        .map(|p| {
            let path = out.path().join(p);
            let m = std::fs::symlink_metadata(&path).unwrap();
            Seen {
                path: (*p).to_owned(),
                size: m.len(),
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec() as u32),
                sha: sha256_hex(&std::fs::read(&path).unwrap()),
            }
        })
        .collect())
}

const PYTHON_LIST: &str = r#"
import hashlib, math, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    for m in t:
        if m.isfile():
            data = t.extractfile(m).read()
            sec = math.floor(m.mtime)
            nsec = round((m.mtime - sec) * 1e9)
            print(m.name, m.size, m.uid, m.gid, sec, nsec, hashlib.sha256(data).hexdigest())
"#;

/// Python's tarfile's view.
fn python(tar: &Path) -> Result<Vec<Seen>, String> {
    let r = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_LIST)
        .arg(tar)
        .output()
        .unwrap();
    if !r.status.success() {
        return Err(String::from_utf8_lossy(&r.stderr).into_owned());
    }
    Ok(String::from_utf8(r.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Seen {
                path: f[0].to_owned(),
                size: f[1].parse().unwrap(),
                uid: f[2].parse().unwrap(),
                gid: f[3].parse().unwrap(),
                mtime: (f[4].parse().unwrap(), f[5].parse().unwrap()),
                sha: f[6].to_owned(),
            }
        })
        .collect())
}

/// Every available reader's view of `tar`: (reader, result).
fn all_views(tar: &[u8], paths: &[&str]) -> Vec<(&'static str, Result<Vec<Seen>, String>)> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.tar");
    std::fs::write(&file, tar).unwrap();
    let mut views = vec![("flattener", ours(tar, paths))];
    if have("tar") {
        views.push(("GNU tar", gnu_tar(&file, paths)));
    }
    if have("python3") {
        views.push(("Python tarfile", python(&file)));
    }
    views
}

#[test]
fn pax_numbers_with_leading_zeros_are_accepted() {
    let big = vec![b'x'; 999];
    let tar = archive(&[
        // size: GNU tar and Python accept (seen below), Go's ParseInt too.
        entry(
            "sized",
            &[record("size", "000000000000000000000999", 0)],
            0,
            &big,
        ),
        // uid, gid and mtime (integer part), each longer than 20 digits.
        entry(
            "owned",
            &[
                record("uid", "0000000000000000000001000", 0),
                record("gid", "00000000000000000000002000", 0),
                record("mtime", "000000000000000000001700000000.5", 0),
            ],
            1,
            b"o",
        ),
        // The record length itself zero-padded to 26 digits.
        entry("long", &[record("path", "named", 24)], 1, b"n"),
    ]);
    let want = vec![
        Seen {
            path: "sized".into(),
            size: 999,
            uid: 0,
            gid: 0,
            mtime: (1, 0),
            sha: sha256_hex(&big),
        },
        Seen {
            path: "owned".into(),
            size: 1,
            uid: 1000,
            gid: 2000,
            mtime: (1_700_000_000, 500_000_000),
            sha: sha256_hex(b"o"),
        },
        Seen {
            path: "named".into(),
            size: 1,
            uid: 0,
            gid: 0,
            mtime: (1, 0),
            sha: sha256_hex(b"n"),
        },
    ];
    let views = all_views(&tar, &["sized", "owned", "named"]);
    for (reader, seen) in views {
        assert_eq!(seen.as_ref(), Ok(&want), "{reader}");
    }
}

#[test]
fn pax_numbers_out_of_range_are_refused_by_all() {
    // 23 digits, past 2^63 (Go: ParseInt overflows; GNU tar: "out of
    // range"; Python: "cannot fit 'int' into an offset-sized integer"),
    // with and without leading zeros.
    for size in [
        "99999999999999999999999",
        "0000000000099999999999999999999999",
    ] {
        let tar = archive(&[entry("huge", &[record("size", size, 0)], 0, b"")]);
        for (reader, seen) in all_views(&tar, &["huge"]) {
            assert!(seen.is_err(), "{reader} accepted size={size}: {seen:?}");
        }
    }
}
