//! The store: content-addressed chunks under `chunks/`, sealed manifests
//! under `manifests/NAME`, prefetch profiles (chunk indexes only) under
//! `profiles/NAME`, on a local directory, S3 or memory.

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use cache_tiers::{ObjectStoreTier, S3Config};
use futures::TryStreamExt;
use manifest::SealedManifest;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::StoreSpec;

/// Chunks (create-if-absent, retried) and manifests (overwritten) in one store.
pub struct Store {
    /// The chunk tier, keyed by chunk name in hex.
    pub chunks: Arc<ObjectStoreTier>,
    raw: Arc<dyn ObjectStore>,
    manifests: String,
    /// How the store was named, for messages.
    pub url: String,
}

/// A manifest listed by [`Store::list_manifests`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListedManifest {
    /// Image name.
    pub name: String,
    /// Encoded manifest size in bytes.
    pub manifest_bytes: u64,
    /// When it was written (RFC 3339).
    pub last_modified: String,
}

impl Store {
    /// Opens (and for a directory, creates) the store.
    pub fn open(spec: &StoreSpec, url: &str) -> Result<Self> {
        let (chunks, prefix) = match spec {
            StoreSpec::File(dir) => (
                ObjectStoreTier::local(dir, "chunks/")
                    .with_context(|| format!("opening store {url}"))?,
                String::new(),
            ),
            StoreSpec::Memory => (ObjectStoreTier::in_memory("chunks/"), String::new()),
            StoreSpec::S3 { bucket, prefix } => {
                let prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                // Region, credentials (static, session token, web identity,
                // container) from the standard AWS environment; the
                // S3-specific endpoint variable wins over the generic one.
                let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                let mut config = S3Config::from_env(bucket.clone());
                config.endpoint = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL"));
                let tier = ObjectStoreTier::s3(&config, format!("{prefix}chunks/"))
                    .with_context(|| format!("opening store {url}"))?;
                (tier, prefix)
            }
        };
        let raw = chunks.store().clone();
        Ok(Self {
            chunks: Arc::new(chunks.with_name("store")),
            raw,
            manifests: format!("{prefix}manifests/"),
            url: url.into(),
        })
    }

    fn manifest_path(&self, name: &str) -> Result<ObjPath> {
        check_image_name(name)?;
        Ok(ObjPath::from(format!("{}{name}", self.manifests)))
    }

    /// Writes (or replaces) the manifest of `name`. Object stores make a put
    /// visible whole or not at all, so readers never see half a manifest.
    pub async fn put_manifest(&self, name: &str, sealed: &SealedManifest) -> Result<()> {
        let path = self.manifest_path(name)?;
        self.raw
            .put(&path, PutPayload::from(sealed.encode()))
            .await
            .with_context(|| format!("writing manifest {name} to {}", self.url))?;
        Ok(())
    }

    /// Reads and decodes the manifest of `name` (no key needed).
    pub async fn get_manifest(&self, name: &str) -> Result<SealedManifest> {
        let path = self.manifest_path(name)?;
        let bytes = match self.raw.get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .with_context(|| format!("reading manifest {name} from {}", self.url))?,
            Err(object_store::Error::NotFound { .. }) => {
                bail!("no image named {name:?} in {} (see `lode ls`)", self.url)
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading manifest {name} from {}", self.url));
            }
        };
        SealedManifest::decode(&bytes)
            .with_context(|| format!("manifest {name} in {} is not valid", self.url))
    }

    /// All manifests, sorted by name.
    pub async fn list_manifests(&self) -> Result<Vec<ListedManifest>> {
        let prefix = ObjPath::from(self.manifests.trim_end_matches('/'));
        let metas: Vec<_> = self
            .raw
            .list(Some(&prefix))
            .try_collect()
            .await
            .with_context(|| format!("listing manifests in {}", self.url))?;
        let mut out: Vec<ListedManifest> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                check_image_name(&name).ok()?;
                Some(ListedManifest {
                    name,
                    manifest_bytes: m.size,
                    last_modified: m.last_modified.to_rfc3339(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The key prefix every object of this store starts with (`""` or `"PREFIX/"`).
    pub fn root(&self) -> &str {
        self.manifests
            .strip_suffix("manifests/")
            .unwrap_or_default()
    }

    /// The underlying object store (for leases that outlive a borrow).
    pub fn raw_store(&self) -> Arc<dyn ObjectStore> {
        self.raw.clone()
    }

    /// Every object under `dir/` (e.g. `chunks`, `manifests`, `locks`), with
    /// its name relative to `dir/`, size and the store's last-modified time.
    pub async fn list_under(&self, dir: &str) -> Result<Vec<StoredObject>> {
        list_under(self.raw.as_ref(), self.root(), dir)
            .await
            .with_context(|| format!("listing {dir}/ in {}", self.url))
    }

    /// The bytes of `dir/name`, or `None` when it does not exist.
    pub async fn get_under(&self, dir: &str, name: &str) -> Result<Option<Bytes>> {
        let path = ObjPath::from(format!("{}{dir}/{name}", self.root()));
        match self.raw.get(&path).await {
            Ok(r) => Ok(Some(r.bytes().await.with_context(|| {
                format!("reading {dir}/{name} from {}", self.url)
            })?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {dir}/{name} from {}", self.url)),
        }
    }

    /// Deletes `dir/name`; an object that is already gone is not an error.
    pub async fn delete_under(&self, dir: &str, name: &str) -> Result<()> {
        delete_under(self.raw.as_ref(), self.root(), dir, name)
            .await
            .with_context(|| format!("deleting {dir}/{name} from {}", self.url))
    }
}

/// Where prefetch profiles live: `profiles/NAME`, beside `manifests/NAME`.
pub const PROFILES: &str = "profiles";

impl Store {
    /// The stored prefetch profile of `name`, if any (validated).
    pub async fn get_profile(&self, name: &str) -> Result<Option<worker::profile::Profile>> {
        check_image_name(name)?;
        let Some(bytes) = self.get_under(PROFILES, name).await? else {
            return Ok(None);
        };
        let what = format!("{PROFILES}/{name} in {}", self.url);
        Ok(Some(worker::profile::Profile::from_json(&bytes, &what)?))
    }

    /// Stores the chunk part of `profile` as the profile of `name`.
    pub async fn put_profile(&self, name: &str, profile: &worker::profile::Profile) -> Result<()> {
        check_image_name(name)?;
        let body = Bytes::from(profile.chunks_only().to_json());
        put_under(self.raw.as_ref(), self.root(), PROFILES, name, body)
            .await
            .with_context(|| format!("writing {PROFILES}/{name} to {}", self.url))?;
        Ok(())
    }
}

/// An object listed by [`Store::list_under`].
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// Name relative to the listed directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last-modified time as the store reports it (the store's clock).
    pub last_modified: std::time::SystemTime,
}

/// See [`Store::list_under`]; usable without a `Store` borrow.
pub async fn list_under(
    raw: &dyn ObjectStore,
    root: &str,
    dir: &str,
) -> object_store::Result<Vec<StoredObject>> {
    let prefix = ObjPath::from(format!("{root}{dir}"));
    let strip = format!("{prefix}/");
    let metas: Vec<_> = raw.list(Some(&prefix)).try_collect().await?;
    Ok(metas
        .into_iter()
        .filter_map(|m| {
            let name = m
                .location
                .as_ref()
                .strip_prefix(strip.as_str())?
                .to_string();
            Some(StoredObject {
                name,
                size: m.size,
                last_modified: m.last_modified.into(),
            })
        })
        .collect())
}

/// See [`Store::delete_under`]; usable without a `Store` borrow.
pub async fn delete_under(
    raw: &dyn ObjectStore,
    root: &str,
    dir: &str,
    name: &str,
) -> object_store::Result<()> {
    let path = ObjPath::from(format!("{root}{dir}/{name}"));
    match raw.delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes (overwriting) `dir/name` and returns its last-modified time as the
/// store reports it, which serves as the store's "now" (no clock skew).
pub async fn put_under(
    raw: &dyn ObjectStore,
    root: &str,
    dir: &str,
    name: &str,
    body: Bytes,
) -> object_store::Result<std::time::SystemTime> {
    let path = ObjPath::from(format!("{root}{dir}/{name}"));
    raw.put(&path, PutPayload::from_bytes(body)).await?;
    Ok(raw.head(&path).await?.last_modified.into())
}

/// Image names are what object keys, file names and KMS contexts can all
/// carry unchanged: 1 to 128 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_image_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
        "image name {name:?} is not valid: use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert!(check_image_name("python-app_1.2").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_image_name(bad).is_err(), "{bad}");
        }
    }
}
