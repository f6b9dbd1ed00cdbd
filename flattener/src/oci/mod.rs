//! Image sources: where the manifest, config and layer blobs come from.
//!
//! [`ImageSource`] is the small trait a new source implements;
//! [`OciLayout`] and [`DockerArchive`] are built in, `Registry`
//! (`docker://`, feature `registry`) reads from a registry, and
//! [`MemorySource`] serves tests and fuzzing.
//! Sources verify the small documents (index, manifest, config) themselves;
//! layer blobs are verified by the flattener while it streams them.

mod docker_archive;
mod layout;
mod memory;
#[cfg(feature = "registry")]
mod registry;
mod run_config;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256, Sha512};

pub use docker_archive::DockerArchive;
pub use layout::OciLayout;
pub use memory::MemorySource;
#[cfg(feature = "registry")]
pub use registry::Registry;
pub use run_config::RunConfig;
pub(crate) use run_config::read_run_config;

use crate::error::{Error, Result};

/// Largest index, manifest or config we read (they are small JSON documents).
pub(crate) const MAX_DOCUMENT: u64 = 16 << 20;

/// A content digest, validated: `sha256:` with 64 or `sha512:` with 128
/// lowercase hex digits (the algorithms the OCI image spec registers).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

/// A digest algorithm the OCI image spec registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// SHA-256, what nearly every image uses.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl DigestAlgorithm {
    /// The name before the colon, also the `blobs/` subdirectory.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

impl Digest {
    /// Checks that `bytes` hash to this digest ([`Error::DigestMismatch`]
    /// naming it otherwise).
    pub(crate) fn verify(&self, bytes: &[u8]) -> Result<()> {
        let actual = Self::compute(self.algorithm(), bytes);
        if actual != *self {
            return Err(Error::DigestMismatch {
                blob: self.to_string(),
                expected: self.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    /// Parses `sha256:<64 hex>` or `sha512:<128 hex>`; other algorithms and
    /// anything else (upper case, path characters) are refused.
    pub fn parse(s: &str) -> Option<Self> {
        let (alg, hex) = s.split_once(':')?;
        let alg = match alg {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            _ => return None,
        };
        (hex.len() == alg.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_owned()))
    }

    /// The SHA-256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::compute(DigestAlgorithm::Sha256, bytes)
    }

    /// The digest of `bytes` under `alg`.
    pub fn compute(alg: DigestAlgorithm, bytes: &[u8]) -> Self {
        let mut h = DigestHasher::new(alg);
        h.update(bytes);
        h.finish()
    }

    pub(crate) fn from_hasher(h: Sha256) -> Self {
        DigestHasher::Sha256(h).finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        if self.0.starts_with("sha512:") {
            DigestAlgorithm::Sha512
        } else {
            DigestAlgorithm::Sha256
        }
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.0[self.algorithm().name().len() + 1..]
    }

    /// The whole `sha256:...` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Hashes a stream under one [`DigestAlgorithm`].
#[derive(Clone)]
pub(crate) enum DigestHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl DigestHasher {
    pub(crate) fn new(alg: DigestAlgorithm) -> Self {
        match alg {
            DigestAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Self::Sha512(Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        match self {
            Self::Sha256(h) => Digest(format!("sha256:{}", hex::encode(h.finalize()))),
            Self::Sha512(h) => Digest(format!("sha512:{}", hex::encode(h.finalize()))),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An OS/architecture pair (`linux/amd64`, `linux/arm64/v8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ... if given.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('/');
        let os = it.next().filter(|x| !x.is_empty())?.to_owned();
        let architecture = it.next().filter(|x| !x.is_empty())?.to_owned();
        let variant = it.next().map(str::to_owned);
        if it.next().is_some() {
            return None;
        }
        Some(Self {
            os,
            architecture,
            variant,
        })
    }

    pub(crate) fn matches(&self, p: &PlatformJson) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && match (&self.variant, &p.variant) {
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }
}

impl Platform {
    /// Whether an image built for `built` runs on this platform: same os and
    /// architecture, and the same variant when both name one (configs often
    /// leave the variant out).
    pub fn runs(&self, built: &Platform) -> bool {
        self.os == built.os
            && self.architecture == built.architecture
            && match (&self.variant, &built.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (RFC 1952), possibly several members.
    Gzip,
    /// Zstandard.
    Zstd,
}

/// One layer of a resolved image.
#[derive(Clone, Debug)]
pub struct LayerDescriptor {
    /// How the source names the blob in errors (its digest or archive path).
    pub name: String,
    /// The blob digest to verify, if the source knows it.
    pub digest: Option<Digest>,
    /// The blob size to verify, if the source knows it.
    pub size: Option<u64>,
    /// Compression the media type announces (`None` when the source has no
    /// media types; the magic bytes decide then).
    pub compression: Option<Compression>,
    /// The uncompressed digest from the config.
    pub diff_id: Digest,
}

/// The layers of the selected image, bottom first. Other crates build one
/// with [`ResolvedImage::new`] (fields may be added).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ResolvedImage {
    /// Layers, bottom first.
    pub layers: Vec<LayerDescriptor>,
    /// Digest of the image config.
    pub config_digest: Digest,
    /// The platform the config says the image is built for (`None` if it
    /// names no os or architecture).
    pub platform: Option<Platform>,
    /// How the config says the image runs (empty when the source does not
    /// read it).
    pub run_config: RunConfig,
}

impl ResolvedImage {
    /// An image of these layers and config, with no platform named.
    pub fn new(layers: Vec<LayerDescriptor>, config_digest: Digest) -> Self {
        Self {
            layers,
            config_digest,
            platform: None,
            run_config: RunConfig::default(),
        }
    }

    /// This image, built for `platform` (from its config).
    pub fn with_platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// This image, run as `run_config` says (from its config).
    pub fn with_run_config(mut self, run_config: RunConfig) -> Self {
        self.run_config = run_config;
        self
    }
}

/// A place images come from. Implementations must be usable from several
/// threads at once (layers are read in parallel).
pub trait ImageSource: Send + Sync {
    /// Name for messages, e.g. `oci:/images:python`.
    fn name(&self) -> String;
    /// Picks the image (by the source's tag and `platform`) and returns its
    /// layers; the config's digest and the manifest's are verified.
    fn resolve(&self, platform: &Platform) -> Result<ResolvedImage>;
    /// Opens a layer blob for streaming. The caller verifies digest and size.
    fn open_layer(&self, layer: &LayerDescriptor) -> Result<Box<dyn Read + Send + '_>>;
}

/// How a registry is reached. Part of [`crate::FlattenOptions`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RegistryOptions {
    /// Verify TLS and use HTTPS (default). `false` speaks plain HTTP, as
    /// skopeo's `--tls-verify=false` does for a registry on loopback.
    pub tls_verify: bool,
    /// The credentials file (`auth.json` / docker `config.json` format).
    /// `None`: `$REGISTRY_AUTH_FILE`, then
    /// `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `~/.config/containers/auth.json`, `~/.docker/config.json`, the first
    /// that exists (as podman and skopeo look).
    pub auth_file: Option<PathBuf>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            tls_verify: true,
            auth_file: None,
        }
    }
}

impl RegistryOptions {
    /// These options with TLS verification on or off.
    pub fn with_tls_verify(mut self, verify: bool) -> Self {
        self.tls_verify = verify;
        self
    }

    /// These options reading credentials from this file.
    pub fn with_auth_file(mut self, path: PathBuf) -> Self {
        self.auth_file = Some(path);
        self
    }
}

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    Oci {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick.
        tag: Option<String>,
    },
    /// `docker-archive:FILE[:REPO:TAG]`: a `docker save` tarball, plain or gzip.
    DockerArchive {
        /// The archive.
        file: PathBuf,
        /// A `RepoTags` entry to pick when the archive holds several images.
        tag: Option<String>,
    },
    /// `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: an image in a registry
    /// (opening it needs the `registry` feature).
    Docker {
        /// The reference after `docker://`.
        reference: String,
    },
}

impl ImageRef {
    /// Parses `oci:DIR[:TAG]`, `docker-archive:FILE[:REF]` (skopeo syntax:
    /// the path ends at the first `:` after the transport) or
    /// `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidReference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(reference) = s.strip_prefix("docker://") {
            if reference.is_empty() {
                return Err(bad("empty registry reference"));
            }
            #[cfg(feature = "registry")]
            registry::parse_reference(reference).map_err(|e| bad(&e))?;
            return Ok(Self::Docker {
                reference: reference.to_owned(),
            });
        }
        let (transport, rest) = s.split_once(':').ok_or_else(|| {
            bad("expected oci:DIR[:TAG], docker-archive:FILE or docker://HOST/REPO:TAG")
        })?;
        let (path, tag) = match rest.split_once(':') {
            Some((p, t)) => (p, Some(t.to_owned()).filter(|t| !t.is_empty())),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        match transport {
            "oci" => Ok(Self::Oci {
                dir: path.into(),
                tag,
            }),
            "docker-archive" => Ok(Self::DockerArchive {
                file: path.into(),
                tag,
            }),
            _ => Err(bad(
                "unknown transport (use oci:, docker-archive: or docker://)",
            )),
        }
    }

    /// Opens the source. `scratch` is a directory for temporary files (a
    /// gzip-compressed docker-archive is unpacked there). A registry is
    /// reached with the default [`RegistryOptions`].
    pub fn open(&self, scratch: &Path) -> Result<Box<dyn ImageSource>> {
        self.open_with(scratch, &RegistryOptions::default())
    }

    /// Like [`open`](Self::open), reaching a registry with `registry`.
    pub fn open_with(
        &self,
        scratch: &Path,
        registry: &RegistryOptions,
    ) -> Result<Box<dyn ImageSource>> {
        Ok(match self {
            Self::Oci { dir, tag } => Box::new(OciLayout::open(dir, tag.clone())?),
            Self::DockerArchive { file, tag } => {
                Box::new(DockerArchive::open(file, tag.clone(), scratch)?)
            }
            #[cfg(feature = "registry")]
            Self::Docker { reference } => Box::new(Registry::open(reference, registry)?),
            #[cfg(not(feature = "registry"))]
            Self::Docker { .. } => {
                let _ = registry;
                return Err(Error::InvalidReference {
                    reference: self.to_string(),
                    reason:
                        "this build has no registry support (feature `registry` of lode-flattener)"
                            .into(),
                });
            }
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, p, tag) = match self {
            Self::Oci { dir, tag } => ("oci", dir, tag),
            Self::DockerArchive { file, tag } => ("docker-archive", file, tag),
            Self::Docker { reference } => return write!(f, "docker://{reference}"),
        };
        write!(f, "{t}:{}", p.display())?;
        if let Some(tag) = tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

/// `platform` of a descriptor.
#[derive(Deserialize, Debug, Clone)]
pub(crate) struct PlatformJson {
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

/// An OCI content descriptor.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DescriptorJson {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) platform: Option<PlatformJson>,
    #[serde(default)]
    pub(crate) annotations: std::collections::BTreeMap<String, String>,
}

/// An image index or a manifest (distinguished by which fields are set).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexOrManifest {
    #[serde(default)]
    pub(crate) media_type: String,
    #[serde(default)]
    pub(crate) manifests: Option<Vec<DescriptorJson>>,
    #[serde(default)]
    pub(crate) config: Option<DescriptorJson>,
    #[serde(default)]
    pub(crate) layers: Option<Vec<DescriptorJson>>,
}

/// The parts of an image config the flattener needs.
#[derive(Deserialize, Debug)]
pub(crate) struct ConfigJson {
    pub(crate) rootfs: RootFsJson,
    /// `os`, `architecture` and `variant`, as in a descriptor's platform.
    #[serde(flatten)]
    pub(crate) platform: PlatformJson,
}

#[derive(Deserialize, Debug)]
pub(crate) struct RootFsJson {
    #[serde(rename = "type", default)]
    pub(crate) kind: String,
    pub(crate) diff_ids: Vec<String>,
}

pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Compression announced by a layer media type; error for non-layer types.
pub(crate) fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// The manifest of `candidates` (an index's list) built for `platform`.
pub(crate) fn pick_platform<'a>(
    source_name: &str,
    candidates: &'a [DescriptorJson],
    platform: &Platform,
) -> Result<&'a DescriptorJson> {
    candidates
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .ok_or_else(|| Error::Image {
            source_name: source_name.to_owned(),
            reason: format!("no manifest for platform {platform}"),
        })
}

/// The layers of a manifest, paired with the config's diff_ids.
pub(crate) fn layer_descriptors(
    source_name: &str,
    layers: &[DescriptorJson],
    diff_ids: Vec<Digest>,
) -> Result<Vec<LayerDescriptor>> {
    let err = |reason: String| Error::Image {
        source_name: source_name.to_owned(),
        reason,
    };
    if diff_ids.len() != layers.len() {
        return Err(err(format!(
            "manifest has {} layers but config has {} diff_ids",
            layers.len(),
            diff_ids.len()
        )));
    }
    let mut out = Vec::with_capacity(layers.len());
    for (l, diff_id) in layers.iter().zip(diff_ids) {
        let digest = Digest::parse(&l.digest)
            .ok_or_else(|| err(format!("unsupported or malformed digest {:?}", l.digest)))?;
        let compression = if l.media_type.is_empty() {
            None
        } else {
            Some(layer_compression(&l.media_type).ok_or_else(|| {
                err(format!(
                    "blob {digest}: unsupported layer media type {:?}",
                    l.media_type
                ))
            })?)
        };
        out.push(LayerDescriptor {
            name: digest.to_string(),
            digest: Some(digest),
            size: Some(l.size),
            compression,
            diff_id,
        });
    }
    Ok(out)
}

/// The diff_ids and the platform of an image config.
pub(crate) fn read_config(
    source_name: &str,
    config: &[u8],
) -> Result<(Vec<Digest>, Option<Platform>)> {
    let c: ConfigJson = serde_json::from_slice(config).map_err(|e| Error::Json {
        source_name: source_name.to_owned(),
        what: "image config".into(),
        source: e,
    })?;
    if !c.rootfs.kind.is_empty() && c.rootfs.kind != "layers" {
        return Err(Error::Image {
            source_name: source_name.to_owned(),
            reason: format!(
                "config rootfs.type is {:?}, expected \"layers\"",
                c.rootfs.kind
            ),
        });
    }
    let diff_ids = c
        .rootfs
        .diff_ids
        .iter()
        .map(|d| {
            Digest::parse(d).ok_or_else(|| Error::Image {
                source_name: source_name.to_owned(),
                reason: format!("config diff_id {d:?} is not a sha256 or sha512 digest"),
            })
        })
        .collect::<Result<_>>()?;
    let p = c.platform;
    let platform = (!p.os.is_empty() && !p.architecture.is_empty()).then(|| Platform {
        os: p.os,
        architecture: p.architecture,
        variant: p.variant.filter(|v| !v.is_empty()),
    });
    Ok((diff_ids, platform))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refs() {
        assert_eq!(
            ImageRef::parse("oci:/a/b:python").unwrap(),
            ImageRef::Oci {
                dir: "/a/b".into(),
                tag: Some("python".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:dir").unwrap(),
            ImageRef::Oci {
                dir: "dir".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("docker-archive:x.tar").unwrap(),
            ImageRef::DockerArchive {
                file: "x.tar".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("docker://127.0.0.1:5000/app:v1").unwrap(),
            ImageRef::Docker {
                reference: "127.0.0.1:5000/app:v1".into()
            }
        );
        assert_eq!(
            ImageRef::parse("docker://h:1/a@sha256:00")
                .map(|r| r.to_string())
                .ok(),
            if cfg!(feature = "registry") {
                None
            } else {
                Some("docker://h:1/a@sha256:00".into())
            }
        );
        assert!(ImageRef::parse("docker://").is_err());
        assert!(ImageRef::parse("oci:").is_err());
        assert!(ImageRef::parse("nocolon").is_err());
        assert_eq!(ImageRef::parse("oci:d:t").unwrap().to_string(), "oci:d:t");
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_none());
        assert!(Platform::parse("a/b/c/d").is_none());
    }

    #[test]
    fn digests() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(Digest::parse("sha256:../../etc/passwd").is_none());
        assert!(Digest::parse(&d.to_string()).is_some());
        assert!(Digest::parse("sha512:00").is_none());
        assert!(Digest::parse("md5:d41d8cd98f00b204e9800998ecf8427e").is_none());
        assert!(Digest::parse(&d.to_string().to_uppercase()).is_none());

        let d = Digest::compute(DigestAlgorithm::Sha512, b"");
        assert_eq!(
            d.hex(),
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
             47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
        );
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha512);
        assert_eq!(Digest::parse(d.as_str()), Some(d.clone()));
        // 64 hex digits are too few for sha512.
        assert!(Digest::parse(&format!("sha512:{}", &d.hex()[..64])).is_none());
    }
}
