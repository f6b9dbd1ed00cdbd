//! Test support: a tar writer covering the formats layers use, OCI layout
//! and docker-archive writers, and a canonical dump of a flattened tree.
#![allow(dead_code, unreachable_pub)]

pub mod fs;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use flattener::tree::{FileData, NodeId, NodeKind, Spool, Tree};
use sha2::{Digest as _, Sha256};

/// An error and its sources, joined with ": " (what `anyhow`'s `{:#}` prints).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

/// A POSIX ACL in the kernel's xattr format: owner rw, user 1000 r,
/// group r, mask r, other none.
pub fn acl_xattr() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// One tar entry to write.
#[derive(Clone, Debug)]
pub struct E {
    pub path: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    pub dev: (u32, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Use a GNU long-name entry instead of PAX for long names.
    pub gnu_long: bool,
}

impl E {
    fn new(path: &[u8], typeflag: u8, mode: u32) -> Self {
        Self {
            path: path.to_vec(),
            typeflag,
            mode,
            uid: 0,
            gid: 0,
            mtime: (1_700_000_000, 0),
            link: Vec::new(),
            data: Vec::new(),
            dev: (0, 0),
            xattrs: Vec::new(),
            gnu_long: false,
        }
    }
    pub fn file(path: &str, data: &[u8]) -> Self {
        Self::file_b(path.as_bytes(), data)
    }
    pub fn file_b(path: &[u8], data: &[u8]) -> Self {
        let mut e = Self::new(path, b'0', 0o644);
        e.data = data.to_vec();
        e
    }
    pub fn dir(path: &str) -> Self {
        Self::new(path.as_bytes(), b'5', 0o755)
    }
    pub fn symlink(path: &str, target: &str) -> Self {
        let mut e = Self::new(path.as_bytes(), b'2', 0o777);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn hardlink(path: &str, target: &str) -> Self {
        let mut e = Self::new(path.as_bytes(), b'1', 0o644);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn dev(path: &str, typeflag: u8, major: u32, minor: u32) -> Self {
        let mut e = Self::new(path.as_bytes(), typeflag, 0o600);
        e.dev = (major, minor);
        e
    }
    pub fn whiteout(path: &str) -> Self {
        Self::file(path, b"")
    }
    pub fn mode(mut self, m: u32) -> Self {
        self.mode = m;
        self
    }
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, sec: i64, nsec: u32) -> Self {
        self.mtime = (sec, nsec);
        self
    }
    pub fn xattr(mut self, k: &str, v: &[u8]) -> Self {
        self.xattrs.push((k.as_bytes().to_vec(), v.to_vec()));
        self
    }
    pub fn gnu(mut self) -> Self {
        self.gnu_long = true;
        self
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}", v, width = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[field.len() - 1] = 0;
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// A raw header; `gnu` selects the GNU magic.
pub fn header(name: &[u8], typeflag: u8, size: u64, e: &E, gnu: bool) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(e.mode));
    octal(&mut h[108..116], u64::from(e.uid.min(0o7777777)));
    octal(&mut h[116..124], u64::from(e.gid.min(0o7777777)));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], e.mtime.0.clamp(0, 0o77777777777) as u64);
    h[156] = typeflag;
    let l = e.link.len().min(100);
    h[157..157 + l].copy_from_slice(&e.link[..l]);
    if gnu {
        h[257..265].copy_from_slice(b"ustar  \0");
    } else {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
    }
    octal(&mut h[329..337], u64::from(e.dev.0));
    octal(&mut h[337..345], u64::from(e.dev.1));
    checksum(&mut h);
    h
}

pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() + body > len {
        len += 1;
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    assert_eq!(r.len(), len);
    r
}

#[derive(Default)]
pub struct TarBuilder {
    pub buf: Vec<u8>,
}

impl TarBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn block_data(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }

    pub fn pax(&mut self, records: &[(Vec<u8>, Vec<u8>)]) {
        let mut data = Vec::new();
        for (k, v) in records {
            data.extend(pax_record(k, v));
        }
        let e = E::new(b"PaxHeaders/x", b'x', 0o644);
        self.buf
            .extend_from_slice(&header(b"PaxHeaders/x", b'x', data.len() as u64, &e, false));
        self.block_data(&data);
    }

    pub fn gnu_long(&mut self, typeflag: u8, name: &[u8]) {
        let mut data = name.to_vec();
        data.push(0);
        let e = E::new(b"././@LongLink", typeflag, 0o644);
        self.buf.extend_from_slice(&header(
            b"././@LongLink",
            typeflag,
            data.len() as u64,
            &e,
            true,
        ));
        self.block_data(&data);
    }

    /// Writes an entry, with PAX or GNU records as needed.
    pub fn add(&mut self, e: &E) -> &mut Self {
        let mut pax = Vec::new();
        let long_name = e.path.len() > 100;
        let long_link = e.link.len() > 100;
        if e.gnu_long {
            if long_name {
                self.gnu_long(b'L', &e.path);
            }
            if long_link {
                self.gnu_long(b'K', &e.link);
            }
        } else {
            if long_name {
                pax.push((b"path".to_vec(), e.path.clone()));
            }
            if long_link {
                pax.push((b"linkpath".to_vec(), e.link.clone()));
            }
        }
        if e.mtime.1 != 0 || e.mtime.0 < 0 || e.mtime.0 > 0o77777777777 {
            let (s, ns) = e.mtime;
            let v = if s < 0 && ns > 0 {
                format!("-{}.{:09}", -(s + 1), 1_000_000_000 - ns)
            } else {
                format!("{s}.{ns:09}")
            };
            pax.push((b"mtime".to_vec(), v.into_bytes()));
        }
        if e.uid > 0o7777777 {
            pax.push((b"uid".to_vec(), e.uid.to_string().into_bytes()));
        }
        for (k, v) in &e.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax.push((key, v.clone()));
        }
        if !pax.is_empty() {
            self.pax(&pax);
        }
        self.buf.extend_from_slice(&header(
            &e.path,
            e.typeflag,
            e.data.len() as u64,
            e,
            e.gnu_long,
        ));
        self.block_data(&e.data);
        self
    }

    /// An old-GNU sparse file ('S'): `segments` are (offset, bytes).
    pub fn old_gnu_sparse(&mut self, path: &str, realsize: u64, segments: &[(u64, Vec<u8>)]) {
        let stored: Vec<u8> = segments.iter().flat_map(|(_, d)| d.clone()).collect();
        let e = E::file(path, b"");
        let mut h = header(path.as_bytes(), b'S', stored.len() as u64, &e, true);
        let mut ext_blocks: Vec<[u8; 512]> = Vec::new();
        for (i, (off, d)) in segments.iter().enumerate() {
            if i < 4 {
                let base = 386 + i * 24;
                octal(&mut h[base..base + 12], *off);
                octal(&mut h[base + 12..base + 24], d.len() as u64);
            } else {
                let j = (i - 4) % 21;
                if j == 0 {
                    ext_blocks.push([0u8; 512]);
                }
                let b = ext_blocks.last_mut().unwrap();
                octal(&mut b[j * 24..j * 24 + 12], *off);
                octal(&mut b[j * 24 + 12..j * 24 + 24], d.len() as u64);
            }
        }
        let nblocks = ext_blocks.len();
        for (k, b) in ext_blocks.iter_mut().enumerate() {
            b[504] = u8::from(k + 1 < nblocks);
        }
        h[482] = u8::from(nblocks > 0);
        octal(&mut h[483..495], realsize);
        checksum(&mut h);
        self.buf.extend_from_slice(&h);
        for b in &ext_blocks {
            self.buf.extend_from_slice(b);
        }
        self.block_data(&stored);
    }

    /// A PAX sparse file in format `version` ("0.0", "0.1" or "1.0").
    pub fn pax_sparse(
        &mut self,
        version: &str,
        path: &str,
        realsize: u64,
        segments: &[(u64, Vec<u8>)],
    ) {
        let mut stored: Vec<u8> = segments.iter().flat_map(|(_, d)| d.clone()).collect();
        let mut recs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let r = |k: &str, v: String| (k.as_bytes().to_vec(), v.into_bytes());
        match version {
            "0.0" => {
                recs.push(r("GNU.sparse.size", realsize.to_string()));
                recs.push(r("GNU.sparse.numblocks", segments.len().to_string()));
                for (o, d) in segments {
                    recs.push(r("GNU.sparse.offset", o.to_string()));
                    recs.push(r("GNU.sparse.numbytes", d.len().to_string()));
                }
                recs.push(r("path", path.to_string()));
            }
            "0.1" => {
                recs.push(r("GNU.sparse.size", realsize.to_string()));
                recs.push(r("GNU.sparse.numblocks", segments.len().to_string()));
                let map: Vec<String> = segments
                    .iter()
                    .flat_map(|(o, d)| [o.to_string(), d.len().to_string()])
                    .collect();
                recs.push(r("GNU.sparse.map", map.join(",")));
                recs.push(r("GNU.sparse.name", path.to_string()));
            }
            "1.0" => {
                recs.push(r("GNU.sparse.major", "1".into()));
                recs.push(r("GNU.sparse.minor", "0".into()));
                recs.push(r("GNU.sparse.name", path.to_string()));
                recs.push(r("GNU.sparse.realsize", realsize.to_string()));
                let mut map = format!("{}\n", segments.len());
                for (o, d) in segments {
                    write!(map, "{o}\n{}\n", d.len()).unwrap();
                }
                let mut m = map.into_bytes();
                m.resize(m.len().div_ceil(512) * 512, 0);
                m.extend_from_slice(&stored);
                stored = m;
            }
            _ => panic!("unknown version"),
        }
        self.pax(&recs);
        let e = E::file("GNUSparseFile.0/x", b"");
        self.buf.extend_from_slice(&header(
            b"GNUSparseFile.0/x",
            b'0',
            stored.len() as u64,
            &e,
            false,
        ));
        self.block_data(&stored);
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.buf);
        b.extend_from_slice(&[0u8; 1024]);
        b
    }
}

pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut t = TarBuilder::new();
    for e in entries {
        t.add(e);
    }
    t.finish()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn compress(tar: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::None => tar.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => {
            ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
        }
    }
}

fn media(c: Comp) -> &'static str {
    match c {
        Comp::None => "application/vnd.oci.image.layer.v1.tar",
        Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

pub fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// Config JSON for these layer tars (linux/amd64).
pub fn config_for(tars: &[Vec<u8>]) -> Vec<u8> {
    config_for_arch(tars, "amd64")
}

/// Config JSON for these layer tars, built for linux/`arch`.
pub fn config_for_arch(tars: &[Vec<u8>], arch: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = tars
        .iter()
        .map(|t| format!("sha256:{}", sha256_hex(t)))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// A layer as stored: (blob, media type, the uncompressed tar its diff_id
/// is computed from). Lets tests write blobs that disagree with their media
/// type or their diff_id.
pub type RawLayer<'a> = (Vec<u8>, &'a str, Vec<u8>);

/// Writes a manifest for these layers into the layout; returns its descriptor JSON.
pub fn add_image(dir: &Path, layers: &[(Vec<u8>, Comp)], arch: &str) -> serde_json::Value {
    let raw: Vec<RawLayer<'_>> = layers
        .iter()
        .map(|(t, c)| (compress(t, *c), media(*c), t.clone()))
        .collect();
    add_raw_image(dir, &raw, arch)
}

/// Like [`add_image`] with the blobs and media types as given.
pub fn add_raw_image(dir: &Path, layers: &[RawLayer<'_>], arch: &str) -> serde_json::Value {
    let tars: Vec<Vec<u8>> = layers.iter().map(|(_, _, t)| t.clone()).collect();
    let config = config_for_arch(&tars, arch);
    let cdig = put_blob(dir, &config);
    let ls: Vec<_> = layers
        .iter()
        .map(|(b, m, _)| serde_json::json!({"mediaType": m, "digest": put_blob(dir, b), "size": b.len()}))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": config.len()},
        "layers": ls
    }))
    .unwrap();
    let mdig = put_blob(dir, &manifest);
    serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": mdig, "size": manifest.len(),
        "platform": {"architecture": arch, "os": "linux"}
    })
}

/// An OCI layout at `dir` holding one untagged image of `layers`.
pub fn raw_layout(dir: &Path, layers: &[RawLayer<'_>]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index =
        serde_json::json!({"schemaVersion": 2, "manifests": [add_raw_image(dir, layers, "amd64")]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A layout with one image per (tag, layers).
/// A layer blob's tar and compression.
pub type LayerBlob = (Vec<u8>, Comp);

pub fn oci_layout(dir: &Path, images: &[(&str, Vec<LayerBlob>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for (tag, layers) in images {
        let mut d = add_image(dir, layers, "amd64");
        d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        manifests.push(d);
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A docker-archive with one image.
pub fn docker_archive(path: &Path, layers: &[Vec<u8>], gzip: bool) {
    let config = config_for(layers);
    let chex = sha256_hex(&config);
    let mut t = TarBuilder::new();
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{i:064x}/layer.tar");
        t.add(&E::dir(&format!("{i:064x}")));
        t.add(&E::file(&name, l));
        names.push(name);
    }
    t.add(&E::file(&format!("{chex}.json"), &config));
    let manifest = serde_json::json!([{"Config": format!("{chex}.json"), "RepoTags": ["test:latest"], "Layers": names}]);
    t.add(&E::file(
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    ));
    let bytes = t.finish();
    let bytes = if gzip {
        compress(&bytes, Comp::Gzip)
    } else {
        bytes
    };
    std::fs::write(path, bytes).unwrap();
}

/// A docker-archive in the newer layout: layers and config under
/// `blobs/sha256/<hex>` (what `docker save` writes since Docker 25).
pub fn docker_archive_blobs(path: &Path, layers: &[Vec<u8>]) {
    let config = config_for(layers);
    let mut t = TarBuilder::new();
    let mut names = Vec::new();
    for l in layers {
        let name = format!("blobs/sha256/{}", sha256_hex(l));
        t.add(&E::file(&name, l));
        names.push(name);
    }
    let cname = format!("blobs/sha256/{}", sha256_hex(&config));
    t.add(&E::file(&cname, &config));
    let manifest =
        serde_json::json!([{"Config": cname, "RepoTags": ["a:1", "b:2"], "Layers": names}]);
    t.add(&E::file(
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    ));
    std::fs::write(path, t.finish()).unwrap();
}

pub fn file_bytes(spool: &dyn Spool, f: &FileData) -> Vec<u8> {
    let mut out = vec![0u8; usize::try_from(f.size).unwrap()];
    for x in &f.extents {
        let s = x.file_offset as usize;
        spool
            .read_at(f.layer, x.spool_offset, &mut out[s..s + x.len as usize])
            .unwrap();
    }
    out
}

/// Path → description of every entry, with content hashes and hard-link ids.
pub fn dump(tree: &Tree, spool: &dyn Spool) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(Vec<u8>, NodeId)> = vec![(b"/".to_vec(), Tree::ROOT)];
    let mut links: BTreeMap<NodeId, usize> = BTreeMap::new();
    while let Some((path, id)) = stack.pop() {
        *links.entry(id).or_default() += 1;
        let n = tree.node(id);
        let m = &n.meta;
        let kind = match &n.kind {
            NodeKind::Directory { entries } => {
                for (name, child) in entries {
                    let mut p = path.clone();
                    if p != b"/" {
                        p.push(b'/');
                    }
                    p.extend_from_slice(name);
                    stack.push((p, *child));
                }
                "dir".to_string()
            }
            NodeKind::Regular { file } => {
                let f = tree.file(*file);
                if f.size > (1 << 26) {
                    format!(
                        "file size={} extents={:?}",
                        f.size,
                        f.extents
                            .iter()
                            .map(|x| (x.file_offset, x.len))
                            .collect::<Vec<_>>()
                    )
                } else {
                    let b = file_bytes(spool, f);
                    format!(
                        "file size={} sha={} extents={}",
                        f.size,
                        &sha256_hex(&b)[..16],
                        f.extents.len()
                    )
                }
            }
            NodeKind::Symlink { target } => format!("symlink {}", String::from_utf8_lossy(target)),
            NodeKind::CharDevice { major, minor } => format!("char {major}:{minor}"),
            NodeKind::BlockDevice { major, minor } => format!("block {major}:{minor}"),
            NodeKind::Fifo => "fifo".into(),
            NodeKind::Socket => "socket".into(),
        };
        let xattrs: Vec<String> = m
            .xattrs
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        out.insert(
            path,
            format!(
                "{kind} mode={:o} {}:{} t={}.{:09} x=[{}] node={}",
                m.mode,
                m.uid,
                m.gid,
                m.mtime.sec,
                m.mtime.nsec,
                xattrs.join(","),
                id.0
            ),
        );
    }
    out
}

/// The per-layer placement: for each layer, each file's size, extents and content hash.
pub fn layout_dump(tree: &Tree, spool: &dyn Spool) -> Vec<Vec<String>> {
    tree.layers
        .iter()
        .map(|l| {
            l.iter()
                .map(|&id| {
                    let f = tree.file(id);
                    let ex: Vec<(u64, u64)> =
                        f.extents.iter().map(|x| (x.file_offset, x.len)).collect();
                    let h = if f.size <= (1 << 26) {
                        sha256_hex(&file_bytes(spool, f))
                    } else {
                        String::new()
                    };
                    format!("{} {:?} {}", f.size, ex, h)
                })
                .collect()
        })
        .collect()
}
