//! The store's object layout, on a local directory, S3 or memory:
//!
//! | key | what |
//! |---|---|
//! | `chunks/NAME` | a sealed chunk; `NAME` is the SHA-256 of its bytes (64 hex digits) |
//! | `manifests/IMAGE` | the sealed manifest of `IMAGE`, replaced whole by a push |
//! | `profiles/IMAGE` | the prefetch profile of `IMAGE` (chunk indexes only) |
//! | `retired/IMAGE/SECS-DIGEST` | a replaced manifest of `IMAGE`, kept for running workers (see [`crate::versions`]) |
//! | `locks/push-ID`, `locks/gc-ID` | leases (see [`crate::gc`](mod@crate::gc)) |
//!
//! All under an optional prefix (`s3://bucket/prefix`).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use cache_tiers::{ObjectStoreTier, S3Config};
use futures::TryStreamExt;
use manifest::SealedManifest;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};
use crate::name::check_image_name;
use crate::url::StoreUrl;

/// Where sealed chunks live.
pub const CHUNKS: &str = "chunks";

/// The largest sealed chunk of any manifest (the largest chunk size plus the
/// AEAD tag): no chunk read from the store buffers more than this, whatever
/// object sits under a chunk's name. [`crate::open_image`] narrows it to the
/// image's own chunk size.
pub const MAX_SEALED_CHUNK: u64 = (chunk_core::MAX_CHUNK_SIZE + chunk_core::TAG_LEN) as u64;
/// Where sealed manifests live.
pub const MANIFESTS: &str = "manifests";
/// Where prefetch profiles live: `profiles/NAME`, beside `manifests/NAME`.
pub const PROFILES: &str = "profiles";
/// Where leases live.
pub const LOCKS: &str = "locks";

/// One store: chunks (create-if-absent, retried), manifests and profiles
/// (replaced whole) and leases. Cheap to clone; clones share the backend.
#[derive(Clone)]
pub struct Store {
    chunks: Arc<ObjectStoreTier>,
    raw: Arc<dyn ObjectStore>,
    root: String,
    url: String,
    /// The directory of a `file://` store (its manifest writes lock there).
    local_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

/// A manifest listed by [`Store::list_manifests`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListedManifest {
    /// Image name.
    pub name: String,
    /// Encoded manifest size in bytes.
    pub manifest_bytes: u64,
    /// When it was written (RFC 3339, UTC, to the second).
    pub last_modified: String,
}

/// An object listed by [`Store::list_under`].
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// Name relative to the listed directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last-modified time as the store reports it (the store's clock).
    pub last_modified: SystemTime,
}

impl Store {
    /// Opens an existing store. A `file://` directory that does not exist is
    /// [`Error::NoStore`] (a typo never creates an empty store); see
    /// [`Store::open_or_create`].
    pub fn open(url: &StoreUrl) -> Result<Self> {
        if let StoreUrl::File(dir) = url
            && !dir.is_dir()
        {
            return Err(Error::NoStore {
                store: url.to_string(),
            });
        }
        Self::open_or_create(url)
    }

    /// Opens the store, creating a `file://` directory when missing (what a push does).
    pub fn open_or_create(url: &StoreUrl) -> Result<Self> {
        let name = url.to_string();
        let open_err = |e: cache_tiers::Error| Error::OpenStore {
            store: name.clone(),
            source: e.into(),
        };
        let (chunks, root) = match url {
            StoreUrl::File(dir) => (
                ObjectStoreTier::local(dir, "chunks/").map_err(open_err)?,
                String::new(),
            ),
            StoreUrl::Memory => (ObjectStoreTier::in_memory("chunks/"), String::new()),
            StoreUrl::S3 { bucket, prefix } => {
                let root = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                // Region and credentials from the standard AWS environment;
                // the S3-specific endpoint variable wins over the generic one.
                let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                let mut config = S3Config::from_env(bucket.clone());
                config.endpoint = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL"));
                let tier =
                    ObjectStoreTier::s3(&config, format!("{root}chunks/")).map_err(open_err)?;
                (tier, root)
            }
        };
        let raw = chunks.store().clone();
        Ok(Self {
            chunks: Arc::new(
                chunks
                    .with_name("store")
                    .with_max_object_size(MAX_SEALED_CHUNK),
            ),
            raw,
            root,
            url: name,
            local_dir: match url {
                StoreUrl::File(dir) => Some(dir.clone()),
                _ => None,
            },
        })
    }

    /// A store over any object store (keys under `root`, `""` or
    /// `"PREFIX/"`); `url` names it in messages. For tests that inject
    /// faults, and for backends lode has no URL for.
    pub fn from_object_store(raw: Arc<dyn ObjectStore>, root: &str, url: &str) -> Self {
        let root = if root.is_empty() || root.ends_with('/') {
            root.to_string()
        } else {
            format!("{root}/")
        };
        let chunks = ObjectStoreTier::new(raw.clone(), format!("{root}chunks/"))
            .with_name("store")
            .with_max_object_size(MAX_SEALED_CHUNK);
        Self {
            chunks: Arc::new(chunks),
            raw,
            root,
            url: url.to_string(),
            local_dir: None,
        }
    }

    /// How the store is named in messages (its URL).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The chunk tier (keys: chunk names in hex), the L3 of a worker.
    pub fn chunks(&self) -> &Arc<ObjectStoreTier> {
        &self.chunks
    }

    /// The key prefix every object of this store starts with (`""` or `"PREFIX/"`).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.raw
    }

    /// The directory of a `file://` store.
    pub(crate) fn local_dir(&self) -> Option<std::path::PathBuf> {
        self.local_dir.clone()
    }

    pub(crate) fn path(&self, dir: &str, name: &str) -> ObjPath {
        ObjPath::from(format!("{}{dir}/{name}", self.root))
    }

    /// Writes (or replaces) the manifest of `name`. Object stores make a put
    /// visible whole or not at all, so readers never see half a manifest.
    pub async fn put_manifest(&self, name: &str, sealed: &SealedManifest) -> Result<()> {
        check_image_name(name)?;
        self.put_under(MANIFESTS, name, Bytes::from(sealed.encode()))
            .await
            .map(|_| ())
    }

    /// Reads and decodes the manifest of `name` (no key needed).
    pub async fn get_manifest(&self, name: &str) -> Result<SealedManifest> {
        check_image_name(name)?;
        let Some(bytes) = self.get_under(MANIFESTS, name).await? else {
            return Err(Error::ImageNotFound {
                name: name.to_string(),
                store: self.url.clone(),
            });
        };
        SealedManifest::decode(&bytes).map_err(|e| Error::BadManifest {
            name: name.to_string(),
            store: self.url.clone(),
            source: e.into(),
        })
    }

    /// Deletes the manifest of `name` (the image); its chunks stay until gc.
    pub async fn delete_manifest(&self, name: &str) -> Result<()> {
        check_image_name(name)?;
        self.delete_under(MANIFESTS, name).await
    }

    /// All manifests, sorted by name (objects whose name is not an image name are skipped).
    pub async fn list_manifests(&self) -> Result<Vec<ListedManifest>> {
        let prefix = ObjPath::from(format!("{}{MANIFESTS}", self.root));
        let metas: Vec<_> = self
            .raw
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::store("listing", format!("{MANIFESTS}/"), &self.url, e))?;
        let mut out: Vec<ListedManifest> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                check_image_name(&name).ok()?;
                Some(ListedManifest {
                    name,
                    manifest_bytes: m.size,
                    last_modified: m.last_modified.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every object under `dir/` (e.g. `chunks`, `manifests`, `locks`), with
    /// its name relative to `dir/`, size and the store's last-modified time.
    pub async fn list_under(&self, dir: &str) -> Result<Vec<StoredObject>> {
        let prefix = ObjPath::from(format!("{}{dir}", self.root));
        let strip = format!("{prefix}/");
        let metas: Vec<_> = self
            .raw
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::store("listing", format!("{dir}/"), &self.url, e))?;
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

    /// The bytes of `dir/name`, or `None` when it does not exist.
    pub async fn get_under(&self, dir: &str, name: &str) -> Result<Option<Bytes>> {
        let err = |e| Error::store("reading", format!("{dir}/{name}"), &self.url, e);
        match self.raw.get(&self.path(dir, name)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(err)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Deletes `dir/name`; an object that is already gone is not an error.
    pub async fn delete_under(&self, dir: &str, name: &str) -> Result<()> {
        match self.raw.delete(&self.path(dir, name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store(
                "deleting",
                format!("{dir}/{name}"),
                &self.url,
                e,
            )),
        }
    }

    /// Writes (overwriting) `dir/name` and returns its last-modified time as
    /// the store reports it, which serves as the store's "now" (no clock skew).
    pub async fn put_under(&self, dir: &str, name: &str, body: Bytes) -> Result<SystemTime> {
        let path = self.path(dir, name);
        let err = |e| Error::store("writing", format!("{dir}/{name}"), &self.url, e);
        self.raw
            .put(&path, PutPayload::from_bytes(body))
            .await
            .map_err(err)?;
        Ok(self
            .raw
            .head(&path)
            .await
            .map_err(err)?
            .last_modified
            .into())
    }

    /// The stored prefetch profile of `name`, if any (validated).
    pub async fn get_profile(&self, name: &str) -> Result<Option<worker::profile::Profile>> {
        check_image_name(name)?;
        let Some(bytes) = self.get_under(PROFILES, name).await? else {
            return Ok(None);
        };
        let what = format!("{PROFILES}/{name} in {}", self.url);
        worker::profile::Profile::from_json(&bytes, &what)
            .map(Some)
            .map_err(|e| Error::ProfileRead {
                what,
                source: e.into(),
            })
    }

    /// Stores the chunk part of `profile` as the profile of `name`.
    pub async fn put_profile(&self, name: &str, profile: &worker::profile::Profile) -> Result<()> {
        check_image_name(name)?;
        let body = Bytes::from(profile.chunks_only().to_json());
        self.put_under(PROFILES, name, body).await.map(|_| ())
    }

    /// Deletes `profiles/NAME`; [`Error::ProfileNotFound`] when there is none.
    pub async fn delete_profile(&self, name: &str) -> Result<()> {
        check_image_name(name)?;
        let path = self.path(PROFILES, name);
        let missing = match self.raw.head(&path).await {
            Ok(_) => false,
            Err(object_store::Error::NotFound { .. }) => true,
            Err(e) => {
                return Err(Error::store(
                    "checking",
                    format!("{PROFILES}/{name}"),
                    &self.url,
                    e,
                ));
            }
        };
        if missing {
            return Err(Error::ProfileNotFound {
                name: name.to_string(),
                store: self.url.clone(),
            });
        }
        self.delete_under(PROFILES, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_file_store_is_an_error_unless_created() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::File(dir.path().join("nope"));
        let e = Store::open(&url).unwrap_err();
        assert!(matches!(e, Error::NoStore { .. }), "{e}");
        let store = Store::open_or_create(&url).unwrap();
        assert!(store.list_manifests().await.unwrap().is_empty());
        assert!(Store::open(&url).is_ok());
    }

    #[tokio::test]
    async fn objects_round_trip_under_a_prefix() {
        let raw: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let store = Store::from_object_store(raw.clone(), "p", "test://p");
        assert_eq!(store.root(), "p/");
        store
            .put_under(PROFILES, "a", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert!(raw.head(&ObjPath::from("p/profiles/a")).await.is_ok());
        assert_eq!(
            store.get_under(PROFILES, "a").await.unwrap().unwrap(),
            Bytes::from_static(b"x")
        );
        let listed = store.list_under(PROFILES).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "a");
        store.delete_under(PROFILES, "a").await.unwrap();
        store.delete_under(PROFILES, "a").await.unwrap();
        assert!(store.get_under(PROFILES, "a").await.unwrap().is_none());
        let e = store.get_manifest("missing").await.unwrap_err();
        assert!(matches!(e, Error::ImageNotFound { .. }), "{e}");
    }
}
