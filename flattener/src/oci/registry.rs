//! `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: an image in a registry,
//! read through the OCI distribution API (`oci-client`).
//!
//! The flattener reads synchronously from several threads; this source owns
//! a small tokio runtime and each layer reader blocks on its own stream.
//! Documents (index, manifest, config) are checked against their digest and
//! size here; layer blobs are checked by the flattener while it streams them,
//! as for every source. Transient failures (connection errors, timeouts, 5xx,
//! 429) are retried with backoff; a layer stream cut in the middle resumes
//! at the byte it reached (HTTP range request).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use zeroize::Zeroizing;

use super::{
    DescriptorJson, Digest, ImageSource, IndexOrManifest, LayerDescriptor, MAX_DOCUMENT, Platform,
    RegistryOptions, ResolvedImage, layer_descriptors, pick_platform, read_config, read_run_config,
};
use crate::error::{BoxError, Error, Result};

/// Media types asked for when fetching a manifest.
const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Attempts per request (the first and the retries).
const ATTEMPTS: u32 = 4;

/// A user name and password for one registry; zeroized on drop.
struct Credentials {
    user: Zeroizing<String>,
    password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// The credentials file to read: the one given, or the first that exists
/// of the places podman and skopeo look.
fn auth_file(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_owned());
    }
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return Some(p.into());
    }
    let mut candidates = Vec::new();
    if let Some(r) = std::env::var_os("XDG_RUNTIME_DIR") {
        candidates.push(Path::new(&r).join("containers/auth.json"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        let h = Path::new(&h);
        candidates.push(h.join(".config/containers/auth.json"));
        candidates.push(h.join(".docker/config.json"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `host/ns/repo` stays.
fn normalize_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key
        .strip_suffix("/v1/")
        .or_else(|| key.strip_suffix("/v2/"))
        .unwrap_or(key);
    key.trim_end_matches('/')
}

/// The credentials for `registry`/`repository` in an `auth.json` /
/// `config.json` document: the most specific `auths` key that matches
/// (`host/ns/repo`, then `host/ns`, then `host`), its `auth` (base64 of
/// `user:password`) or its `username` and `password`.
fn credentials_for(
    doc: &serde_json::Value,
    registry: &str,
    repository: &str,
) -> std::result::Result<Option<Credentials>, String> {
    let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    // Docker Hub is filed under its legacy index name.
    let hosts: &[&str] = if registry == "docker.io" {
        &["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        &[registry]
    };
    let mut best: Option<(usize, &serde_json::Value)> = None;
    for (key, entry) in auths {
        let key = normalize_key(key);
        let matches = hosts.iter().any(|h| {
            let full = format!("{h}/{repository}");
            key == *h || key == full || full.starts_with(&format!("{key}/")) && key.starts_with(h)
        });
        if matches && best.is_none_or(|(len, _)| key.len() > len) {
            best = Some((key.len(), entry));
        }
    }
    let Some((_, entry)) = best else {
        return Ok(None);
    };
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
        if auth.is_empty() {
            return Ok(None);
        }
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| format!("the auth entry for {registry} is not base64"))?,
        );
        let text = std::str::from_utf8(&raw)
            .map_err(|_| format!("the auth entry for {registry} is not UTF-8"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| format!("the auth entry for {registry} is not user:password"))?;
        return Ok(Some(Credentials {
            user: Zeroizing::new(user.to_owned()),
            password: Zeroizing::new(password.to_owned()),
        }));
    }
    match (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            user: Zeroizing::new(u.to_owned()),
            password: Zeroizing::new(p.to_owned()),
        })),
        _ => Ok(None),
    }
}

/// Whether a failed request is worth another try.
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => {
            r.is_timeout() || r.is_connect() || r.is_body() || r.is_request()
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// Whether the registry said the repository or the manifest does not exist.
fn not_found(e: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode as C;
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, C::ManifestUnknown | C::NameUnknown | C::NotFound)),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(5))
}

/// An image in a registry. See the module docs.
pub struct Registry {
    /// `Some` until dropped (shut down in the background, so dropping in
    /// an async context does not panic).
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    /// `docker://` plus the reference as given.
    name: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Parses the part after `docker://`.
pub(crate) fn parse_reference(s: &str) -> std::result::Result<Reference, String> {
    Reference::from_str(s).map_err(|e| e.to_string())
}

impl Registry {
    /// Connects to the registry of `reference` (the part after `docker://`);
    /// nothing is fetched yet.
    pub fn open(reference: &str, opts: &RegistryOptions) -> Result<Self> {
        let name = format!("docker://{reference}");
        let parsed = parse_reference(reference).map_err(|reason| Error::InvalidReference {
            reference: name.clone(),
            reason,
        })?;
        let auth = match auth_file(opts.auth_file.as_deref()) {
            None => RegistryAuth::Anonymous,
            Some(path) => {
                let bytes = std::fs::read(&path).map_err(|e| Error::Io {
                    path: path.clone(),
                    source: e,
                })?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                        source_name: path.display().to_string(),
                        what: "credentials file".into(),
                        source: e,
                    })?;
                match credentials_for(&doc, parsed.registry(), parsed.repository()).map_err(
                    |reason| Error::Image {
                        source_name: path.display().to_string(),
                        reason,
                    },
                )? {
                    Some(c) => {
                        RegistryAuth::Basic(c.user.as_str().into(), c.password.as_str().into())
                    }
                    None => RegistryAuth::Anonymous,
                }
            }
        };
        let config = ClientConfig {
            protocol: if opts.tls_verify {
                ClientProtocol::Https
            } else {
                ClientProtocol::Http
            },
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lode-registry")
            .enable_all()
            .build()
            .map_err(|e| Error::Registry {
                reference: name.clone(),
                what: "starting the I/O runtime".into(),
                source: Box::new(e),
            })?;
        Ok(Self {
            rt: Some(rt),
            client: Client::new(config),
            reference: parsed,
            auth,
            name,
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime lives until drop")
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Image {
            source_name: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn registry_err(&self, what: String, e: OciDistributionError) -> Error {
        Error::Registry {
            reference: self.name.clone(),
            what,
            source: Box::new(e) as BoxError,
        }
    }

    /// Fetches a manifest or index (by tag or digest), retrying transient
    /// failures; checks the digest when fetched by digest.
    fn manifest(&self, r: &Reference, expect: Option<&DescriptorJson>) -> Result<Vec<u8>> {
        let mut attempt = 0;
        let bytes = loop {
            match self
                .rt()
                .block_on(self.client.pull_manifest_raw(r, &self.auth, ACCEPTED))
            {
                Ok((bytes, _)) => break bytes.to_vec(),
                Err(e) if transient(&e) && attempt + 1 < ATTEMPTS => {
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
                Err(e) if not_found(&e) => {
                    let what = match (r.digest(), r.tag()) {
                        (Some(d), _) => format!("no manifest {d} in repository {}", r.repository()),
                        (None, Some(t)) => format!(
                            "no image tagged {t:?} in repository {} (is the tag or the repository misspelt?)",
                            r.repository()
                        ),
                        (None, None) => format!("repository {} not found", r.repository()),
                    };
                    return Err(self.registry_err(what, e));
                }
                Err(e) => return Err(self.registry_err(format!("fetching manifest {r}"), e)),
            }
        };
        if let Some(d) = expect {
            self.check(d, &bytes)?;
        } else if let Some(d) = r.digest() {
            let digest = Digest::parse(d)
                .ok_or_else(|| self.err(format!("unsupported or malformed digest {d:?}")))?;
            digest.verify(&bytes)?;
        }
        Ok(bytes)
    }

    /// Checks bytes against their descriptor's size and digest.
    fn check(&self, d: &DescriptorJson, bytes: &[u8]) -> Result<()> {
        let digest = Digest::parse(&d.digest)
            .ok_or_else(|| self.err(format!("unsupported or malformed digest {:?}", d.digest)))?;
        if bytes.len() as u64 != d.size {
            return Err(Error::DigestMismatch {
                blob: digest.to_string(),
                expected: format!("{} bytes", d.size),
                actual: format!("{} bytes", bytes.len()),
            });
        }
        let actual = Digest::compute(digest.algorithm(), bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                blob: digest.to_string(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    /// Reads a small blob (the config) whole, checked.
    fn document_blob(&self, d: &DescriptorJson) -> Result<Vec<u8>> {
        if d.size > MAX_DOCUMENT {
            return Err(self.err(format!(
                "{} is {} bytes, too large for an image config",
                d.digest, d.size
            )));
        }
        let mut bytes = Vec::new();
        BlobReader::new(self, d.digest.clone())
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Registry {
                reference: self.name.clone(),
                what: format!("fetching blob {}", d.digest),
                source: Box::new(e),
            })?;
        self.check(d, &bytes)?;
        Ok(bytes)
    }

    fn parse_json(&self, bytes: &[u8], what: &str) -> Result<IndexOrManifest> {
        serde_json::from_slice(bytes).map_err(|e| Error::Json {
            source_name: self.name.clone(),
            what: what.into(),
            source: e,
        })
    }
}

impl ImageSource for Registry {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn resolve(&self, platform: &Platform) -> Result<ResolvedImage> {
        let mut reference = self.reference.clone();
        let mut expect: Option<DescriptorJson> = None;
        // Follow indexes down to a manifest.
        for _ in 0..8 {
            let bytes = self.manifest(&reference, expect.as_ref())?;
            let what = match &expect {
                Some(d) => format!("manifest {}", d.digest),
                None => format!("manifest {reference}"),
            };
            let doc = self.parse_json(&bytes, &what)?;
            if let Some(list) = &doc.manifests {
                let d = pick_platform(&self.name, list, platform)?.clone();
                reference = self.reference.clone_with_digest(d.digest.clone());
                expect = Some(d);
                continue;
            }
            let (Some(config), Some(layers)) = (doc.config, doc.layers) else {
                return Err(self.err(format!(
                    "{what} (media type {:?}) is neither an index nor an image manifest",
                    doc.media_type
                )));
            };
            let config_bytes = self.document_blob(&config)?;
            let (diff_ids, config_platform) = read_config(&self.name, &config_bytes)?;
            let run_config = read_run_config(&self.name, &config_bytes)?;
            let layers = layer_descriptors(&self.name, &layers, diff_ids)?;
            let config_digest = Digest::parse(&config.digest).ok_or_else(|| {
                self.err(format!(
                    "unsupported or malformed digest {:?}",
                    config.digest
                ))
            })?;
            return Ok(ResolvedImage {
                layers,
                config_digest,
                platform: config_platform,
                run_config,
            });
        }
        Err(self.err("image indexes nested too deeply"))
    }

    fn open_layer(&self, layer: &LayerDescriptor) -> Result<Box<dyn Read + Send + '_>> {
        let digest = layer
            .digest
            .as_ref()
            .ok_or_else(|| self.err("layer without digest"))?;
        Ok(Box::new(BlobReader::new(self, digest.to_string())))
    }
}

type ByteStream = futures::stream::BoxStream<'static, std::result::Result<bytes::Bytes, io::Error>>;

/// Streams one blob, blocking on the source's runtime; resumes at the
/// current offset after a transient failure.
struct BlobReader<'a> {
    registry: &'a Registry,
    digest: String,
    /// Bytes handed out so far.
    offset: u64,
    stream: Option<ByteStream>,
    /// Bytes of a new stream to drop first (a server that ignored the range).
    skip: u64,
    buf: bytes::Bytes,
    done: bool,
    attempt: u32,
}

impl<'a> BlobReader<'a> {
    fn new(registry: &'a Registry, digest: String) -> Self {
        Self {
            registry,
            digest,
            offset: 0,
            stream: None,
            skip: 0,
            buf: bytes::Bytes::new(),
            done: false,
            attempt: 0,
        }
    }

    /// The next piece of the blob (`None` at its end).
    fn next_piece(&mut self) -> std::result::Result<Option<bytes::Bytes>, OciDistributionError> {
        let r = self.registry;
        r.rt().block_on(async {
            if self.stream.is_none() {
                // Always a range request: a 206 answer is not verified by the
                // client (the flattener verifies the whole blob itself), and
                // the same path resumes after a failure.
                let resp = r
                    .client
                    .pull_blob_stream_partial(
                        &r.reference,
                        &self.digest.as_str(),
                        self.offset,
                        None,
                    )
                    .await?;
                let (stream, skip) = match resp {
                    BlobResponse::Partial(s) => (s.stream, 0),
                    BlobResponse::Full(s) => (s.stream, self.offset),
                };
                self.stream = Some(stream);
                self.skip = skip;
            }
            let stream = self.stream.as_mut().expect("just opened");
            loop {
                match stream.next().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(OciDistributionError::IoError(e)),
                    Some(Ok(mut b)) => {
                        if self.skip > 0 {
                            let k = self.skip.min(b.len() as u64);
                            self.skip -= k;
                            b = b.slice(k as usize..);
                        }
                        if !b.is_empty() {
                            return Ok(Some(b));
                        }
                    }
                }
            }
        })
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.buf.is_empty() {
                let n = out.len().min(self.buf.len());
                out[..n].copy_from_slice(&self.buf[..n]);
                self.buf = self.buf.slice(n..);
                self.offset += n as u64;
                return Ok(n);
            }
            if self.done || out.is_empty() {
                return Ok(0);
            }
            match self.next_piece() {
                Ok(Some(b)) => {
                    self.buf = b;
                    self.attempt = 0;
                }
                Ok(None) => self.done = true,
                Err(e) if transient(&e) && self.attempt + 1 < ATTEMPTS => {
                    self.stream = None;
                    std::thread::sleep(backoff(self.attempt));
                    self.attempt += 1;
                }
                Err(e) => {
                    return Err(io::Error::other(RegistryIo {
                        digest: self.digest.clone(),
                        offset: self.offset,
                        source: e,
                    }));
                }
            }
        }
    }
}

/// A blob read that failed for good (after retries).
#[derive(Debug, thiserror::Error)]
#[error("fetching blob {digest} from byte {offset}")]
struct RegistryIo {
    digest: String,
    offset: u64,
    #[source]
    source: OciDistributionError,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn credentials_are_found_as_podman_finds_them() {
        let doc = serde_json::json!({"auths": {
            "127.0.0.1:5000": {"auth": b64("alice:s3cret:with:colons")},
            "127.0.0.1:5000/team/app": {"auth": b64("bob:pw")},
            "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
            "other.example": {"username": "u", "password": "p"},
        }});
        let c = credentials_for(&doc, "127.0.0.1:5000", "python-app")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("alice", "s3cret:with:colons")
        );
        let c = credentials_for(&doc, "127.0.0.1:5000", "team/app")
            .unwrap()
            .unwrap();
        assert_eq!(c.user.as_str(), "bob");
        let c = credentials_for(&doc, "docker.io", "library/python")
            .unwrap()
            .unwrap();
        assert_eq!(c.user.as_str(), "hub");
        let c = credentials_for(&doc, "other.example", "x")
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("u", "p"));
        assert!(
            credentials_for(&doc, "127.0.0.1:5001", "x")
                .unwrap()
                .is_none()
        );
        assert_eq!(format!("{c:?}"), "Credentials(..)");
        let bad = serde_json::json!({"auths": {"h": {"auth": "!!"}}});
        assert!(credentials_for(&bad, "h", "r").is_err());
    }

    #[test]
    fn references_parse() {
        let r = parse_reference("127.0.0.1:5000/python-app:latest").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "python-app");
        assert_eq!(r.tag(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("localhost:5000/a/b@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert!(parse_reference("UPPER/Case:x").is_err());
    }
}
