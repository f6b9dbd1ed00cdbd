//! `docker-archive:FILE`: the tarball `docker save` writes (plain or gzip).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{
    Digest, DigestAlgorithm, ImageSource, LayerDescriptor, MAX_DOCUMENT, Platform, ResolvedImage,
    read_config, read_run_config,
};
use crate::error::{Error, Result};
use crate::tar::{EntryType, TarError, TarReader};

/// A `docker save` archive: `manifest.json` naming a config and layer files.
#[derive(Debug)]
pub struct DockerArchive {
    path: PathBuf,
    tag: Option<String>,
    file: Arc<File>,
    /// Member path → (data offset, size).
    members: BTreeMap<String, (u64, u64)>,
    /// Member path → the member it links to (`docker save` before Docker 25
    /// writes a layer that occurs twice as a symlink to the first copy).
    links: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn normalize(p: &[u8]) -> String {
    let s = String::from_utf8_lossy(p);
    let mut out: Vec<&str> = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

impl DockerArchive {
    /// Opens and indexes the archive. A gzip archive is first unpacked into
    /// an anonymous temporary file in `scratch`.
    pub fn open(path: &Path, tag: Option<String>, scratch: &Path) -> Result<Self> {
        let io = |e| Error::Io {
            path: path.to_owned(),
            source: e,
        };
        let mut f = File::open(path).map_err(io)?;
        let mut magic = [0u8; 2];
        let n = f.read_at(&mut magic, 0).map_err(io)?;
        if n == 2 && magic == [0x1f, 0x8b] {
            let mut tmp = tempfile::tempfile_in(scratch).map_err(|e| Error::Io {
                path: scratch.to_owned(),
                source: e,
            })?;
            let mut dec = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, f));
            io::copy(&mut dec, &mut tmp).map_err(io)?;
            f = tmp;
        }
        let file = Arc::new(f);
        let mut members = BTreeMap::new();
        let mut tar = TarReader::new(BufReader::with_capacity(
            1 << 20,
            PositionedReader {
                file: file.clone(),
                pos: 0,
                end: u64::MAX,
            },
        ));
        let tar_err = |e: TarError| match e {
            TarError::Io(e) => io(e),
            TarError::Truncated { offset } => Error::Image {
                source_name: format!("docker-archive:{}", path.display()),
                reason: format!("truncated archive (entry at offset {offset})"),
            },
            TarError::Malformed { offset, reason } => Error::Image {
                source_name: format!("docker-archive:{}", path.display()),
                reason: format!("malformed archive at offset {offset}: {reason}"),
            },
        };
        let mut links = BTreeMap::new();
        while let Some(e) = tar.next_entry().map_err(tar_err)? {
            match e.kind {
                EntryType::Regular if e.sparse.is_none() => {
                    members.insert(normalize(&e.path), (tar.position(), e.size));
                }
                // A symlink's target is relative to its directory; a hard
                // link's to the archive root.
                EntryType::Symlink => {
                    let name = normalize(&e.path);
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    let target = if e.link.first() == Some(&b'/') {
                        e.link.clone()
                    } else {
                        format!("{dir}/{}", String::from_utf8_lossy(&e.link)).into_bytes()
                    };
                    links.insert(name, normalize(&target));
                }
                EntryType::HardLink => {
                    links.insert(normalize(&e.path), normalize(&e.link));
                }
                _ => {}
            }
        }
        Ok(Self {
            path: path.to_owned(),
            tag,
            file,
            members,
            links,
        })
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Image {
            source_name: self.name(),
            reason: reason.into(),
        }
    }

    fn member(&self, name: &str) -> Result<(u64, u64)> {
        let mut cur = normalize(name.as_bytes());
        for _ in 0..16 {
            if let Some(&m) = self.members.get(&cur) {
                return Ok(m);
            }
            match self.links.get(&cur) {
                Some(next) => cur = next.clone(),
                None => break,
            }
        }
        Err(self.err(format!("archive has no member {name:?}")))
    }

    fn read_member(&self, name: &str) -> Result<Vec<u8>> {
        let (off, size) = self.member(name)?;
        if size > MAX_DOCUMENT {
            return Err(self.err(format!("{name} is too large ({size} bytes)")));
        }
        let mut v = vec![0u8; size as usize];
        self.file
            .read_exact_at(&mut v, off)
            .map_err(|e| Error::Io {
                path: self.path.clone(),
                source: e,
            })?;
        Ok(v)
    }
}

/// A digest named by a member path such as `blobs/sha256/<hex>` or `<hex>.json`.
fn digest_from_name(name: &str) -> Option<Digest> {
    let n = normalize(name.as_bytes());
    for alg in ["sha256", "sha512"] {
        if let Some(hex) = n.strip_prefix(&format!("blobs/{alg}/")) {
            return Digest::parse(&format!("{alg}:{hex}"));
        }
    }
    let hex = n.strip_suffix(".json")?;
    Digest::parse(&format!("sha256:{hex}"))
}

impl ImageSource for DockerArchive {
    fn name(&self) -> String {
        match &self.tag {
            Some(t) => format!("docker-archive:{}:{t}", self.path.display()),
            None => format!("docker-archive:{}", self.path.display()),
        }
    }

    fn resolve(&self, _platform: &Platform) -> Result<ResolvedImage> {
        let bytes = self.read_member("manifest.json")?;
        let manifest: Vec<ManifestEntry> =
            serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                source_name: self.name(),
                what: "manifest.json".into(),
                source: e,
            })?;
        let entry = match &self.tag {
            Some(tag) => manifest
                .iter()
                .find(|m| m.repo_tags.as_ref().is_some_and(|t| t.contains(tag)))
                .ok_or_else(|| self.err(format!("no image tagged {tag:?} in manifest.json")))?,
            None => match manifest.as_slice() {
                [one] => one,
                [] => return Err(self.err("manifest.json lists no image")),
                _ => return Err(self.err("manifest.json lists several images; add :REPO:TAG")),
            },
        };
        let config = self.read_member(&entry.config)?;
        let named = digest_from_name(&entry.config);
        let config_digest = Digest::compute(
            named
                .as_ref()
                .map_or(DigestAlgorithm::Sha256, Digest::algorithm),
            &config,
        );
        if let Some(named) = named
            && named != config_digest
        {
            return Err(Error::DigestMismatch {
                blob: entry.config.clone(),
                expected: named.to_string(),
                actual: config_digest.to_string(),
            });
        }
        let (diff_ids, config_platform) = read_config(&self.name(), &config)?;
        let run_config = read_run_config(&self.name(), &config)?;
        if diff_ids.len() != entry.layers.len() {
            return Err(self.err(format!(
                "manifest.json lists {} layers but the config has {} diff_ids",
                entry.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (name, diff_id) in entry.layers.iter().zip(diff_ids) {
            let (_, size) = self.member(name)?;
            layers.push(LayerDescriptor {
                name: name.clone(),
                digest: digest_from_name(name),
                size: Some(size),
                compression: None,
                diff_id,
            });
        }
        Ok(ResolvedImage {
            layers,
            config_digest,
            platform: config_platform,
            run_config,
        })
    }

    fn open_layer(&self, layer: &LayerDescriptor) -> Result<Box<dyn Read + Send + '_>> {
        let (off, size) = self.member(&layer.name)?;
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            PositionedReader {
                file: self.file.clone(),
                pos: off,
                end: off.saturating_add(size),
            },
        )))
    }
}

/// Reads `file[pos..end]` with `pread`, so several readers share one handle.
struct PositionedReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for PositionedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
