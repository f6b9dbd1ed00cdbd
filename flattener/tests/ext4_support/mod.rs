//! Shared helpers of the ext4 integration tests: building trees in code,
//! an in-memory spool, e2fsck, loop mounts and an exact tree comparison.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use flattener::ext4::{Ext4Options, ImageSummary, write_image};
use flattener::tree::{
    DataExtent, FileData, FileId, Metadata, Node, NodeId, NodeKind, Spool, Timestamp, Tree,
};

/// Spool kept in memory, one byte vector per layer.
#[derive(Default, Clone)]
pub struct MemSpool {
    pub layers: Vec<Vec<u8>>,
}

impl Spool for MemSpool {
    fn read_at(&self, layer: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let data = self
            .layers
            .get(layer as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such layer"))?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = data
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past spool end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Builds a tree and its spool in code.
pub struct Builder {
    pub tree: Tree,
    pub spool: MemSpool,
}

pub fn meta(mode: u32) -> Metadata {
    Metadata {
        mode,
        uid: 0,
        gid: 0,
        mtime: Timestamp {
            sec: 1_600_000_000,
            nsec: 0,
        },
        xattrs: BTreeMap::new(),
    }
}

impl Builder {
    pub fn new() -> Self {
        Self {
            tree: Tree::new(meta(0o755)),
            spool: MemSpool::default(),
        }
    }

    fn ensure_layer(&mut self, layer: u32) {
        while self.tree.layers.len() <= layer as usize {
            self.tree.layers.push(Vec::new());
            self.spool.layers.push(Vec::new());
        }
    }

    pub fn link(&mut self, dir: NodeId, name: &[u8], node: NodeId) {
        match &mut self.tree.node_mut(dir).kind {
            NodeKind::Directory { entries } => {
                entries.insert(name.to_vec(), node);
            }
            _ => panic!("not a directory"),
        }
    }

    pub fn unlink(&mut self, dir: NodeId, name: &[u8]) {
        if let NodeKind::Directory { entries } = &mut self.tree.node_mut(dir).kind {
            entries.remove(name);
        }
    }

    pub fn add(&mut self, dir: NodeId, name: &[u8], meta: Metadata, kind: NodeKind) -> NodeId {
        let id = self.tree.push_node(Node { meta, kind });
        self.link(dir, name, id);
        id
    }

    pub fn dir(&mut self, parent: NodeId, name: &[u8], meta: Metadata) -> NodeId {
        self.add(
            parent,
            name,
            meta,
            NodeKind::Directory {
                entries: BTreeMap::new(),
            },
        )
    }

    /// Appends file contents to `layer`'s spool: `runs` are (file offset,
    /// bytes) present runs; the rest up to `size` are holes.
    pub fn contents(&mut self, layer: u32, size: u64, runs: &[(u64, &[u8])]) -> FileId {
        self.ensure_layer(layer);
        let spool = &mut self.spool.layers[layer as usize];
        let mut extents = Vec::new();
        for &(off, bytes) in runs {
            extents.push(DataExtent {
                file_offset: off,
                len: bytes.len() as u64,
                spool_offset: spool.len() as u64,
            });
            spool.extend_from_slice(bytes);
        }
        let id = FileId(self.tree.files.len() as u32);
        self.tree.files.push(FileData {
            layer,
            size,
            extents,
        });
        self.tree.layers[layer as usize].push(id);
        id
    }

    pub fn file(
        &mut self,
        dir: NodeId,
        name: &[u8],
        meta: Metadata,
        layer: u32,
        data: &[u8],
    ) -> NodeId {
        let runs: &[(u64, &[u8])] = if data.is_empty() { &[] } else { &[(0, data)] };
        let file = self.contents(layer, data.len() as u64, runs);
        self.add(dir, name, meta, NodeKind::Regular { file })
    }

    pub fn write(&self, opts: &Ext4Options, path: &Path) -> ImageSummary {
        let f = File::create(path).expect("create image");
        write_image(&self.tree, &self.spool, opts, f).expect("write image")
    }

    pub fn write_vec(&self, opts: &Ext4Options) -> Vec<u8> {
        let mut out = io::Cursor::new(Vec::new());
        write_image(&self.tree, &self.spool, opts, &mut out).expect("write image");
        out.into_inner()
    }
}

pub fn test_opts() -> Ext4Options {
    let mut o = Ext4Options::new(*b"lode-ext4-test-u", *b"lode-ext4-seed-1");
    o.label = b"lode-test".to_vec();
    o
}

fn require_tools() -> bool {
    std::env::var("LODE_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

/// Whether a tool runs; prints "skipped" when not (or panics under CI).
pub fn have(tool: &str, why: &str) -> bool {
    let ok = Command::new(tool).arg("-V").output().is_ok();
    if !ok {
        assert!(
            !require_tools(),
            "{tool} is required (LODE_REQUIRE_SERVERS=1) but missing"
        );
        println!("skipped: {tool} not available ({why})");
    }
    ok
}

/// Runs `e2fsck -fn` and asserts it exits 0 with nothing but its pass lines.
pub fn e2fsck_clean(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("run e2fsck");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| {
            !(l.is_empty()
                || l.starts_with("e2fsck ")
                || l.starts_with("Pass 1: ")
                || l.starts_with("Pass 2: ")
                || l.starts_with("Pass 3: ")
                || l.starts_with("Pass 4: ")
                || l.starts_with("Pass 5: ")
                || (l.contains(" files (") && l.contains(" blocks")))
        })
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "e2fsck -fn {} exited {:?} with complaints:\n{stdout}\n{stderr}",
        image.display(),
        out.status.code()
    );
}

/// A read-only loop mount, unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts `image`, or returns None (after printing why) if mounting is
    /// impossible here and not required.
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
                let dmesg = Command::new("dmesg")
                    .output()
                    .map(|d| d.stdout)
                    .unwrap_or_default();
                let tail: Vec<_> = String::from_utf8_lossy(&dmesg)
                    .lines()
                    .rev()
                    .take(5)
                    .map(String::from)
                    .collect();
                // An ext4 mount failing as root is a writer bug; without root it is the environment.
                assert!(
                    !require_tools() && unsafe_is_not_root(),
                    "mount failed: {msg}\nkernel: {tail:?}"
                );
                println!("skipped: cannot mount ({msg})");
                None
            }
            Err(e) => {
                assert!(!require_tools(), "mount required but not runnable: {e}");
                println!("skipped: mount not runnable: {e}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn unsafe_is_not_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() != 0 }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// All xattrs of `path` (not following symlinks).
pub fn read_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = cpath(path);
    let mut names = vec![0u8; 65536];
    // SAFETY: buffer pointer and length describe a live allocation.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
    names.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("xattr name");
        let mut value = vec![0u8; 65536];
        // SAFETY: as above.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(
            n >= 0,
            "lgetxattr {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
        value.truncate(n as usize);
        out.insert(name.to_vec(), value);
    }
    out
}

/// The expected bytes of `file` in `[off, off + len)`.
fn expected_chunk(spool: &MemSpool, f: &FileData, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let stop = off + len as u64;
    for e in &f.extents {
        let s = e.file_offset.max(off);
        let t = (e.file_offset + e.len).min(stop);
        if s < t {
            spool
                .read_at(
                    f.layer,
                    e.spool_offset + (s - e.file_offset),
                    &mut buf[(s - off) as usize..(t - off) as usize],
                )
                .expect("spool");
        }
    }
    buf
}

/// Compares the mounted tree at `root` with `tree`, exactly. Returns the
/// number of entries compared.
pub fn compare_tree(tree: &Tree, spool: &MemSpool, root: &Path) -> usize {
    let mut ino_of: HashMap<NodeId, u64> = HashMap::new();
    let mut links: HashMap<NodeId, u64> = HashMap::new();
    // Count expected links first.
    let mut stack = vec![Tree::ROOT];
    while let Some(d) = stack.pop() {
        if let NodeKind::Directory { entries } = &tree.node(d).kind {
            for &c in entries.values() {
                if matches!(tree.node(c).kind, NodeKind::Directory { .. }) {
                    *links.entry(d).or_insert(2) += 1;
                    links.entry(c).or_insert(2);
                    stack.push(c);
                } else {
                    *links.entry(c).or_insert(0) += 1;
                }
            }
        }
    }
    links.entry(Tree::ROOT).or_insert(2);
    let mut compared = 0;
    let mut stack = vec![(Tree::ROOT, root.to_path_buf())];
    while let Some((id, path)) = stack.pop() {
        compared += 1;
        let node = tree.node(id);
        let md =
            std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ctx = path.display().to_string();
        assert_eq!(md.mode() & 0o7777, node.meta.mode & 0o7777, "mode of {ctx}");
        assert_eq!(md.uid(), node.meta.uid, "uid of {ctx}");
        assert_eq!(md.gid(), node.meta.gid, "gid of {ctx}");
        assert_eq!(
            (md.mtime(), md.mtime_nsec() as u32),
            (node.meta.mtime.sec, node.meta.mtime.nsec),
            "mtime of {ctx}"
        );
        let want_links = links[&id];
        let want_links = if want_links > 65000 { 1 } else { want_links };
        assert_eq!(md.nlink(), want_links, "link count of {ctx}");
        match ino_of.get(&id) {
            Some(&ino) => assert_eq!(md.ino(), ino, "hard link {ctx} has another inode"),
            None => {
                assert!(
                    !ino_of.values().any(|&i| i == md.ino()),
                    "{ctx} shares an inode with another node"
                );
                ino_of.insert(id, md.ino());
            }
        }
        assert_eq!(read_xattrs(&path), node.meta.xattrs, "xattrs of {ctx}");
        let ft = md.file_type();
        match &node.kind {
            NodeKind::Directory { entries } => {
                assert!(ft.is_dir(), "{ctx} is not a directory");
                let mut found: Vec<Vec<u8>> = std::fs::read_dir(&path)
                    .expect("read_dir")
                    .map(|e| e.expect("dirent").file_name().as_bytes().to_vec())
                    .collect();
                found.sort();
                let want: Vec<Vec<u8>> = entries.keys().cloned().collect();
                if found != want {
                    let extra: Vec<_> = found
                        .iter()
                        .filter(|n| !entries.contains_key(*n))
                        .take(5)
                        .collect();
                    panic!(
                        "entries of {ctx} differ: {} found, {} expected, extra {extra:?}",
                        found.len(),
                        want.len()
                    );
                }
                for (name, &child) in entries {
                    stack.push((child, path.join(OsStr::from_bytes(name))));
                }
            }
            NodeKind::Regular { file } => {
                assert!(ft.is_file(), "{ctx} is not a regular file");
                let f = tree.file(*file);
                assert_eq!(md.size(), f.size, "size of {ctx}");
                let want_blocks: u64 = {
                    let mut blocks = std::collections::BTreeSet::new();
                    for e in &f.extents {
                        for b in e.file_offset / 4096..(e.file_offset + e.len).div_ceil(4096) {
                            blocks.insert(b);
                        }
                    }
                    blocks.len() as u64
                };
                // st_blocks counts 512-byte sectors, extent tree blocks included.
                assert!(
                    md.blocks() >= want_blocks * 8,
                    "{ctx}: {} sectors < {} data blocks",
                    md.blocks(),
                    want_blocks
                );
                assert!(
                    md.blocks() <= want_blocks * 8 + 8 * 16,
                    "{ctx}: holes were allocated ({} sectors)",
                    md.blocks()
                );
                let mut fh = File::open(&path).expect("open file");
                let mut off = 0u64;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = read_full(&mut fh, &mut buf);
                    if n == 0 {
                        break;
                    }
                    let want = expected_chunk(spool, f, off, n);
                    assert!(
                        buf[..n] == want[..],
                        "contents of {ctx} differ in [{off}, {})",
                        off + n as u64
                    );
                    off += n as u64;
                }
                assert_eq!(off, f.size, "read length of {ctx}");
            }
            NodeKind::Symlink { target } => {
                assert!(ft.is_symlink(), "{ctx} is not a symlink");
                let got = std::fs::read_link(&path).expect("readlink");
                assert_eq!(got.as_os_str().as_bytes(), &target[..], "target of {ctx}");
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                let is_char = matches!(node.kind, NodeKind::CharDevice { .. });
                assert!(
                    if is_char {
                        ft.is_char_device()
                    } else {
                        ft.is_block_device()
                    },
                    "{ctx} type"
                );
                let rdev = md.rdev();
                assert_eq!(
                    (libc::major(rdev), libc::minor(rdev)),
                    (*major, *minor),
                    "device of {ctx}"
                );
            }
            NodeKind::Fifo => assert!(ft.is_fifo(), "{ctx} is not a FIFO"),
            NodeKind::Socket => assert!(ft.is_socket(), "{ctx} is not a socket"),
        }
    }
    compared
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).expect("read") {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// Writes the image to a temp file, runs e2fsck and, where possible, mounts
/// and compares. Returns the temp dir holding `image.ext4` and the summary.
pub fn check_image(b: &Builder, opts: &Ext4Options) -> (tempfile::TempDir, PathBuf, ImageSummary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("image.ext4");
    let summary = b.write(opts, &image);
    assert_eq!(
        std::fs::metadata(&image).expect("image").len(),
        summary.size_bytes
    );
    if have("e2fsck", "checking images") {
        e2fsck_clean(&image);
    }
    if let Some(m) = Mount::new(&image) {
        let n = compare_tree(&b.tree, &b.spool, m.path());
        assert!(n >= 1);
    }
    (dir, image, summary)
}
