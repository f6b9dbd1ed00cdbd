//! Judges: e2fsck, a read-only loop mount (unmounted on drop), and a
//! listing of a real directory tree in the same format as a flattened tree.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use flattener::tree::{NodeId, NodeKind, Spool, Tree};
use sha2::{Digest as _, Sha256};

pub fn required() -> bool {
    std::env::var("LODE_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

/// Whether `tool` runs; prints "skipped" when not (fails under CI).
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("-V").output().is_ok();
    if !ok {
        assert!(
            !required(),
            "{tool} is required (LODE_REQUIRE_SERVERS=1) but missing"
        );
        println!("skipped: {tool} not available");
    }
    ok
}

/// `e2fsck -fn`: must exit 0 and print nothing but its pass lines.
pub fn e2fsck(image: &Path) -> Result<(), String> {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.is_empty()
                || l.starts_with("e2fsck ")
                || l.starts_with("Pass ")
                || (l.contains(" files (") && l.contains(" blocks")))
        })
        .collect();
    if out.status.success() && complaints.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "e2fsck -fn exited {:?}:\n{text}",
            out.status.code()
        ))
    }
}

/// A read-only loop mount, unmounted on drop.
pub struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts `image`; `None` (after printing why) when mounting is not
    /// possible here and not required.
    pub fn new(image: &Path) -> Option<Self> {
        let dir = tempfile::tempdir().expect("mountpoint");
        let out = Command::new("mount")
            .args(["-o", "loop,ro", "-t", "ext4"])
            .arg(image)
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                let msg = String::from_utf8_lossy(&o.stderr).into_owned();
                // SAFETY: geteuid has no preconditions.
                let root = unsafe { libc::geteuid() } == 0;
                assert!(!required() && !root, "mount failed: {msg}");
                println!("skipped: cannot mount ({msg})");
                None
            }
            Err(e) => {
                assert!(!required(), "mount not runnable: {e}");
                println!("skipped: mount not runnable: {e}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Every xattr of `path` (not following a symlink), by name.
pub fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut names = vec![0u8; 65536];
    // SAFETY: pointer and length describe a live buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    names.truncate(n as usize);
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("name");
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let n =
            unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if n >= 0 {
            v.truncate(n as usize);
            out.insert(name.to_vec(), v);
        }
    }
    out
}

fn fmt_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    x.iter()
        .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(k), hex::encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// One line per path: type, content, mode, owner, mtime, xattrs, links
/// and the first path of its hard-link group.
pub type Listing = BTreeMap<Vec<u8>, String>;

/// Lists a real directory tree (not following symlinks).
pub fn list_dir(root: &Path) -> Listing {
    let mut raw: Vec<(Vec<u8>, String, u64, u64, bool)> = Vec::new();
    let mut stack = vec![(b"/".to_vec(), root.to_path_buf())];
    while let Some((rel, path)) = stack.pop() {
        let md =
            std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            let mut names: Vec<Vec<u8>> = std::fs::read_dir(&path)
                .expect("read_dir")
                .map(|e| e.expect("dirent").file_name().as_bytes().to_vec())
                .collect();
            names.sort();
            for n in names {
                let mut r = rel.clone();
                if r != b"/" {
                    r.push(b'/');
                }
                r.extend_from_slice(&n);
                stack.push((r, path.join(OsStr::from_bytes(&n))));
            }
            "dir".to_string()
        } else if ft.is_file() {
            format!(
                "file size={} data={}",
                md.size(),
                mounted_content_hash(&path, md.size())
            )
        } else if ft.is_symlink() {
            format!(
                "symlink {}",
                String::from_utf8_lossy(
                    std::fs::read_link(&path)
                        .expect("readlink")
                        .as_os_str()
                        .as_bytes()
                )
            )
        } else if ft.is_char_device() || ft.is_block_device() {
            let r = md.rdev();
            let t = if ft.is_char_device() { "char" } else { "block" };
            format!("{t} {}:{}", libc::major(r), libc::minor(r))
        } else if ft.is_fifo() {
            "fifo".into()
        } else {
            "socket".into()
        };
        let line = format!(
            "{kind} mode={:o} {}:{} t={}.{:09} x=[{}] nlink={}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec(),
            fmt_xattrs(&xattrs(&path)),
            md.nlink()
        );
        raw.push((rel, line, md.ino(), md.nlink(), ft.is_dir()));
    }
    with_groups(raw)
}

fn with_groups(mut raw: Vec<(Vec<u8>, String, u64, u64, bool)>) -> Listing {
    raw.sort();
    let mut first: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut out = Listing::new();
    for (rel, line, ino, nlink, dir) in raw {
        let group = if !dir && nlink > 1 {
            let f = first.entry(ino).or_insert_with(|| rel.clone());
            format!(" group={}", String::from_utf8_lossy(f))
        } else {
            String::new()
        };
        out.insert(rel, format!("{line}{group}"));
    }
    out
}

/// Lists a flattened tree in the same format as [`list_dir`].
pub fn list_tree(tree: &Tree, spool: &dyn Spool) -> Listing {
    let mut nlink: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut raw = Vec::new();
    let mut stack = vec![(b"/".to_vec(), Tree::ROOT)];
    let mut paths = Vec::new();
    while let Some((rel, id)) = stack.pop() {
        let n = tree.node(id);
        if let NodeKind::Directory { entries } = &n.kind {
            let subdirs = entries
                .values()
                .filter(|c| matches!(tree.node(**c).kind, NodeKind::Directory { .. }))
                .count() as u64;
            nlink.insert(id, 2 + subdirs);
            for (name, c) in entries {
                let mut r = rel.clone();
                if r != b"/" {
                    r.push(b'/');
                }
                r.extend_from_slice(name);
                if !matches!(tree.node(*c).kind, NodeKind::Directory { .. }) {
                    *nlink.entry(*c).or_default() += 1;
                }
                stack.push((r, *c));
            }
        }
        paths.push((rel, id));
    }
    for (rel, id) in paths {
        let n = tree.node(id);
        let kind = match &n.kind {
            NodeKind::Directory { .. } => "dir".to_string(),
            NodeKind::Regular { file } => {
                let f = tree.file(*file);
                format!("file size={} data={}", f.size, tree_content_hash(spool, f))
            }
            NodeKind::Symlink { target } => format!("symlink {}", String::from_utf8_lossy(target)),
            NodeKind::CharDevice { major, minor } => format!("char {major}:{minor}"),
            NodeKind::BlockDevice { major, minor } => format!("block {major}:{minor}"),
            NodeKind::Fifo => "fifo".into(),
            NodeKind::Socket => "socket".into(),
        };
        let m = &n.meta;
        let line = format!(
            "{kind} mode={:o} {}:{} t={}.{:09} x=[{}] nlink={}",
            m.mode,
            m.uid,
            m.gid,
            m.mtime.sec,
            m.mtime.nsec,
            fmt_xattrs(&m.xattrs),
            nlink[&id]
        );
        let dir = matches!(n.kind, NodeKind::Directory { .. });
        raw.push((rel, line, u64::from(id.0), nlink[&id], dir));
    }
    with_groups(raw)
}

/// Differences between two listings, at most `max` lines.
pub fn diff(a: &Listing, b: &Listing, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("only in first: {} {v}", String::from_utf8_lossy(k))),
            Some(w) if w != v => out.push(format!("{}:\n  {v}\n  {w}", String::from_utf8_lossy(k))),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            out.push(format!(
                "only in second: {} {v}",
                String::from_utf8_lossy(k)
            ));
        }
    }
    out.truncate(max);
    out
}

pub fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

const BLK: u64 = 4096;

/// Hash of a file's non-zero 4 KiB blocks with their offsets: equal for
/// equal contents, without reading (or hashing) holes.
fn mounted_content_hash(path: &Path, size: u64) -> String {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(path).expect("open");
    let mut h = Sha256::new();
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; BLK as usize];
    while (pos as u64) < size {
        // SAFETY: plain lseek on an open descriptor.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        let mut b = data as u64 / BLK;
        while b * BLK < end {
            let n = (size - b * BLK).min(BLK) as usize;
            f.read_exact_at(&mut buf[..n], b * BLK).expect("read");
            if buf[..n].iter().any(|&x| x != 0) {
                h.update(b.to_le_bytes());
                h.update(&buf[..n]);
            }
            b += 1;
        }
        pos = end as i64;
    }
    hex::encode(&h.finalize()[..8])
}

fn tree_content_hash(spool: &dyn Spool, f: &flattener::tree::FileData) -> String {
    let mut blocks = std::collections::BTreeSet::new();
    for x in &f.extents {
        for b in x.file_offset / BLK..(x.file_offset + x.len).div_ceil(BLK) {
            blocks.insert(b);
        }
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLK as usize];
    for b in blocks {
        let start = b * BLK;
        let n = (f.size - start).min(BLK) as usize;
        buf[..n].fill(0);
        for x in &f.extents {
            let s = x.file_offset.max(start);
            let t = (x.file_offset + x.len).min(start + n as u64);
            if s < t {
                spool
                    .read_at(
                        f.layer,
                        x.spool_offset + (s - x.file_offset),
                        &mut buf[(s - start) as usize..(t - start) as usize],
                    )
                    .expect("spool");
            }
        }
        if buf[..n].iter().any(|&x| x != 0) {
            h.update(b.to_le_bytes());
            h.update(&buf[..n]);
        }
    }
    hex::encode(&h.finalize()[..8])
}
