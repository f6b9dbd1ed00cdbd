//! `oci:DIR[:TAG]`: an OCI image layout directory.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::{
    DescriptorJson, Digest, ImageSource, IndexOrManifest, LayerDescriptor, MAX_DOCUMENT, Platform,
    REF_NAME, ResolvedImage, layer_descriptors, pick_platform, read_config, read_run_config,
};
use crate::error::{Error, Result};

/// An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`).
#[derive(Debug)]
pub struct OciLayout {
    dir: PathBuf,
    tag: Option<String>,
}

impl OciLayout {
    /// Opens the layout at `dir`; `tag` selects a manifest by its
    /// `org.opencontainers.image.ref.name` annotation.
    pub fn open(dir: &Path, tag: Option<String>) -> Result<Self> {
        let index = dir.join("index.json");
        if let Err(e) = std::fs::metadata(&index) {
            return Err(Error::Io {
                path: index,
                source: e,
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            tag,
        })
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Image {
            source_name: self.name(),
            reason: reason.into(),
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    fn parse_digest(&self, s: &str) -> Result<Digest> {
        Digest::parse(s).ok_or_else(|| self.err(format!("unsupported or malformed digest {s:?}")))
    }

    /// Reads a small blob and checks its size and digest.
    fn read_document(&self, d: &DescriptorJson) -> Result<Vec<u8>> {
        let digest = self.parse_digest(&d.digest)?;
        if d.size > MAX_DOCUMENT {
            return Err(self.err(format!(
                "{} is {} bytes, too large for a manifest",
                digest, d.size
            )));
        }
        let path = self.blob_path(&digest);
        let io = |e| Error::Io {
            path: path.clone(),
            source: e,
        };
        let mut bytes = Vec::new();
        File::open(&path)
            .map_err(io)?
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 != d.size {
            return Err(Error::DigestMismatch {
                blob: digest.to_string(),
                expected: format!("{} bytes", d.size),
                actual: format!("{} bytes", bytes.len()),
            });
        }
        digest.verify(&bytes)?;
        Ok(bytes)
    }

    fn parse_json(&self, bytes: &[u8], what: &str) -> Result<IndexOrManifest> {
        serde_json::from_slice(bytes).map_err(|e| Error::Json {
            source_name: self.name(),
            what: what.into(),
            source: e,
        })
    }
}

/// The tags of an index's manifests, for messages.
fn tags(manifests: &[DescriptorJson]) -> String {
    manifests
        .iter()
        .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ImageSource for OciLayout {
    fn name(&self) -> String {
        match &self.tag {
            Some(t) => format!("oci:{}:{t}", self.dir.display()),
            None => format!("oci:{}", self.dir.display()),
        }
    }

    fn resolve(&self, platform: &Platform) -> Result<ResolvedImage> {
        let index_path = self.dir.join("index.json");
        let mut bytes = Vec::new();
        File::open(&index_path)
            .and_then(|f| f.take(MAX_DOCUMENT).read_to_end(&mut bytes))
            .map_err(|e| Error::Io {
                path: index_path.clone(),
                source: e,
            })?;
        let index = self.parse_json(&bytes, "index.json")?;
        let manifests = index
            .manifests
            .ok_or_else(|| self.err("index.json has no manifests"))?;
        let mut desc = match &self.tag {
            Some(tag) => {
                let tagged: Vec<DescriptorJson> = manifests
                    .iter()
                    .filter(|d| d.annotations.get(REF_NAME) == Some(tag))
                    .cloned()
                    .collect();
                match tagged.len() {
                    0 => {
                        return Err(self.err(format!(
                            "no manifest tagged {tag:?} (tags: {})",
                            tags(&manifests)
                        )));
                    }
                    1 => tagged[0].clone(),
                    _ => pick_platform(&self.name(), &tagged, platform)?.clone(),
                }
            }
            None => match manifests.len() {
                0 => return Err(self.err("index.json lists no manifests")),
                1 => manifests[0].clone(),
                _ if manifests.iter().all(|d| d.platform.is_some())
                    && manifests.iter().all(|d| {
                        d.annotations.get(REF_NAME) == manifests[0].annotations.get(REF_NAME)
                    }) =>
                {
                    pick_platform(&self.name(), &manifests, platform)?.clone()
                }
                _ => {
                    return Err(self.err(format!(
                        "index.json lists several images; add :TAG (tags: {})",
                        tags(&manifests)
                    )));
                }
            },
        };
        // Follow nested indexes down to a manifest.
        for _ in 0..8 {
            let bytes = self.read_document(&desc)?;
            let doc = self.parse_json(&bytes, &format!("manifest {}", desc.digest))?;
            if let Some(list) = &doc.manifests {
                desc = pick_platform(&self.name(), list, platform)?.clone();
                continue;
            }
            let (Some(config), Some(layers)) = (doc.config, doc.layers) else {
                return Err(self.err(format!(
                    "{} (media type {:?}) is neither an index nor an image manifest",
                    desc.digest, doc.media_type
                )));
            };
            let config_bytes = self.read_document(&config)?;
            let (diff_ids, config_platform) = read_config(&self.name(), &config_bytes)?;
            let run_config = read_run_config(&self.name(), &config_bytes)?;
            let out = layer_descriptors(&self.name(), &layers, diff_ids)?;
            return Ok(ResolvedImage {
                layers: out,
                config_digest: self.parse_digest(&config.digest)?,
                platform: config_platform,
                run_config,
            });
        }
        Err(self.err("image indexes nested too deeply"))
    }

    fn open_layer(&self, layer: &LayerDescriptor) -> Result<Box<dyn std::io::Read + Send + '_>> {
        let digest = layer
            .digest
            .as_ref()
            .ok_or_else(|| self.err("layer without digest"))?;
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(|e| Error::Io { path, source: e })?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
    }
}
