//! The public facts of a manifest, read without a key service, and proof
//! that a key service opens it (keys are never returned), with the image
//! config sealed beside the keys (entrypoint, cmd, env, …).

use std::collections::{BTreeMap, HashSet};

use chunk_core::CryptoProvider;
use kms_envelope::Kms;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::layout::Store;

/// Chunks this image shares with the other manifests of the store.
#[derive(Debug, Clone, Serialize)]
pub struct Sharing {
    /// Other manifests compared against.
    pub other_manifests: u64,
    /// Other manifests that could not be read or decoded (skipped).
    pub unreadable_manifests: Vec<String>,
    /// Distinct chunks of this image that at least one other manifest names.
    pub shared_chunks: u64,
    /// `shared_chunks` / distinct chunks of this image (0 when it has none).
    pub share: f64,
}

/// What `--keys` proved.
#[derive(Debug, Clone, Serialize)]
pub struct KeysCheck {
    /// The KMS unwrapped the data key and the sealed chunk keys authenticated.
    pub ok: bool,
    /// Chunk keys opened.
    pub chunk_keys: u64,
    /// The sealed image config: `null` for a format-1 manifest, pushed
    /// before lode kept it.
    pub config: Option<ConfigFacts>,
}

/// How the image runs, from its sealed config (shown only with `--keys`:
/// `env` often holds secrets).
#[derive(Debug, Clone, Serialize)]
pub struct ConfigFacts {
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Env`, `KEY=VALUE` each.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `ExposedPorts`.
    pub exposed_ports: Vec<String>,
    /// `os/architecture[/variant]`, when the config names one.
    pub platform: Option<String>,
}

impl From<&manifest::ImageConfig> for ConfigFacts {
    fn from(c: &manifest::ImageConfig) -> Self {
        let platform = match (&c.os, &c.architecture) {
            (Some(os), Some(arch)) => Some(match &c.variant {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            }),
            _ => None,
        };
        ConfigFacts {
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            env: c.env.clone(),
            working_dir: c.working_dir.clone(),
            user: c.user.clone(),
            stop_signal: c.stop_signal.clone(),
            labels: c.labels.clone(),
            exposed_ports: c.exposed_ports.iter().cloned().collect(),
            platform,
        }
    }
}

/// The image's stored prefetch profile (`profiles/NAME`).
#[derive(Debug, Clone, Serialize)]
pub struct ProfileFacts {
    /// Chunks it prefetches.
    pub chunks: u64,
    /// Recording window in milliseconds.
    pub window_ms: u64,
    /// Whether it was recorded on this manifest (a stale one is not used).
    pub matches_manifest: bool,
}

/// Public facts of one manifest.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// Image name.
    pub name: String,
    /// Where the image came from, e.g. `oci:DIR:TAG`.
    pub source_ref: String,
    /// Digest of the source image (its config).
    pub source_digest: String,
    /// Flattened image size in bytes.
    pub image_bytes: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Chunk indexes, holes included.
    pub chunks: u64,
    /// Indexes with a stored chunk.
    pub present: u64,
    /// All-zero chunks (not stored).
    pub holes: u64,
    /// Distinct chunk names (an image can repeat a chunk).
    pub distinct_chunks: u64,
    /// Salt id the chunks were sealed with.
    pub salt_id: u32,
    /// Tool and version that wrote the manifest.
    pub tool_version: String,
    /// Manifest format version.
    pub format_version: u16,
    /// KMS key id the data key is wrapped under.
    pub key_id: String,
    /// Encryption context the data key is bound to.
    pub encryption_context: BTreeMap<String, String>,
    /// Encoded manifest size in bytes.
    pub manifest_bytes: u64,
    /// SHA-256 of the public part (hex): stable across key rewraps.
    pub public_digest: String,
    /// Sharing with other manifests.
    pub sharing: Sharing,
    /// The stored prefetch profile, `null` when there is none.
    pub profile: Option<ProfileFacts>,
    /// Set by the caller with [`check_keys`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysCheck>,
}

/// Reads `name`'s manifest and compares its chunks with every other manifest.
///
/// `provider` computes the manifest's public digest (to match its profile).
pub async fn inspect(
    store: &Store,
    name: &str,
    provider: &dyn CryptoProvider,
) -> Result<(InspectReport, manifest::SealedManifest)> {
    let sealed = store.get_manifest(name).await?;
    let mine: HashSet<_> = sealed.names().flatten().collect();

    let mut others = HashSet::new();
    let mut other_manifests = 0;
    let mut unreadable = Vec::new();
    for m in store.list_manifests().await? {
        if m.name == name {
            continue;
        }
        match store.get_manifest(&m.name).await {
            Ok(other) => {
                other_manifests += 1;
                others.extend(other.names().flatten().filter(|n| mine.contains(n)));
            }
            Err(e) => {
                tracing::warn!(
                    manifest = %m.name,
                    error = &e as &dyn std::error::Error,
                    "skipping a manifest that cannot be read"
                );
                unreadable.push(m.name);
            }
        }
    }
    let profile = match store.get_profile(name).await {
        Ok(p) => p.map(|p| ProfileFacts {
            chunks: p.chunks.len() as u64,
            window_ms: p.window_ms,
            matches_manifest: p
                .check_image(
                    &hex::encode(sealed.public_digest(provider)),
                    sealed.image_size(),
                    sealed.chunk_size(),
                )
                .is_ok(),
        }),
        Err(e) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "not reporting the stored profile"
            );
            None
        }
    };
    let shared = others.len() as u64;
    let present = sealed.present_count() as u64;
    let chunks = sealed.chunk_count() as u64;
    let report = InspectReport {
        name: name.to_string(),
        source_ref: sealed.source_ref().to_string(),
        source_digest: sealed.source_digest().to_string(),
        image_bytes: sealed.image_size(),
        chunk_size: sealed.chunk_size(),
        chunks,
        present,
        holes: chunks - present,
        distinct_chunks: mine.len() as u64,
        salt_id: sealed.salt_id(),
        tool_version: sealed.tool_version().to_string(),
        format_version: sealed.format_version(),
        key_id: sealed.key_id().to_string(),
        encryption_context: sealed.context().clone(),
        manifest_bytes: sealed.encode().len() as u64,
        public_digest: hex::encode(sealed.public_digest(provider)),
        sharing: Sharing {
            other_manifests,
            unreadable_manifests: unreadable,
            shared_chunks: shared,
            share: if mine.is_empty() {
                0.0
            } else {
                shared as f64 / mine.len() as f64
            },
        },
        profile,
        keys: None,
    };
    Ok((report, sealed))
}

/// Proves `kms` opens the manifest of `name` under the context bound to
/// `name`; returns the number of chunk keys (never the keys) and the sealed
/// image config.
pub async fn check_keys(
    sealed: &manifest::SealedManifest,
    name: &str,
    provider: &dyn CryptoProvider,
    kms: &dyn Kms,
) -> Result<KeysCheck> {
    let (opened, config) = sealed
        .open_with_config(provider, kms, &manifest::image_context(name))
        .await
        .map_err(|e| Error::OpenKeys {
            name: name.to_string(),
            key_id: sealed.key_id().to_string(),
            source: e.into(),
        })?;
    let n = opened.chunks.iter().flatten().count() as u64;
    Ok(KeysCheck {
        ok: true,
        chunk_keys: n,
        config: config.as_ref().map(ConfigFacts::from),
    })
}
