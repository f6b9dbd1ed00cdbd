//! Image versions: a name moves forward only, and replaced versions stay
//! readable for a while.
//!
//! `manifests/NAME` is the current version of an image. A push reads it (and
//! its object version) when it starts and replaces it at the end with a
//! conditional write that succeeds only if it is still that version
//! ([`Store::put_manifest_if`]): of two concurrent pushes to one name exactly
//! one wins, and the other fails with [`Error::PushConflict`] having changed
//! nothing. On S3 and in memory the write is the store's own conditional put
//! (`If-Match` / `If-None-Match`); on a `file://` store, whose object store
//! cannot compare versions, it is a compare-and-write under an exclusive
//! `flock` on `.manifests.lock` in the store's directory (one host, or a
//! network file system whose `flock` reaches every client).
//!
//! Before it moves the name, a push that replaces a manifest keeps a copy of
//! it under `retired/NAME/SECS-DIGEST` (the retirement time in Unix seconds
//! and the first 16 hex digits of its public digest). Workers that opened the
//! old version keep reading its chunks; [`gc`](crate::gc()) marks the chunks
//! of every version retired less than [`GcOptions::retain`](crate::GcOptions)
//! ago (default 7 days, the longest a worker is expected to serve an old
//! version) and deletes older copies.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use manifest::SealedManifest;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::layout::{MANIFESTS, Store};
use crate::name::check_image_name;

/// Where copies of replaced manifests are kept.
pub const RETIRED: &str = "retired";

/// How long replaced versions keep their chunks by default.
pub const DEFAULT_RETAIN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The version of `manifests/NAME` a push started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestVersion {
    /// There was no manifest: the write must create it.
    Absent,
    /// This object version: the write must replace exactly it.
    Present {
        /// The object's entity tag.
        e_tag: Option<String>,
        /// The object's version id (versioned buckets).
        version: Option<String>,
    },
}

/// The current manifest of an image with its object version.
#[derive(Debug)]
pub struct CurrentManifest {
    /// The manifest.
    pub sealed: SealedManifest,
    /// Its object version.
    pub version: ManifestVersion,
}

/// A retired version of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RetiredVersion {
    /// Its object name under `retired/NAME/`.
    pub object: String,
    /// When it was replaced (Unix seconds).
    pub retired_at: u64,
    /// First 16 hex digits of its public digest.
    pub digest: String,
}

impl RetiredVersion {
    /// Parses `SECS-DIGEST`.
    pub fn parse(object: &str) -> Option<Self> {
        let (secs, digest) = object.split_once('-')?;
        let ok = digest.len() == 16 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        let retired_at = secs.parse().ok().filter(|_| ok)?;
        Some(Self {
            object: object.to_string(),
            retired_at,
            digest: digest.to_string(),
        })
    }

    /// How long ago it was retired, at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Duration::from_secs(now.saturating_sub(self.retired_at))
    }
}

impl Store {
    /// The current manifest of `name` and its object version; `None` when
    /// there is none.
    pub async fn current_manifest(&self, name: &str) -> Result<Option<CurrentManifest>> {
        check_image_name(name)?;
        let path = self.path(MANIFESTS, name);
        let err = |e| Error::store("reading", format!("{MANIFESTS}/{name}"), self.url(), e);
        let got = match self.object_store().get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let version = ManifestVersion::Present {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got.bytes().await.map_err(err)?;
        let sealed = SealedManifest::decode(&bytes).map_err(|e| Error::BadManifest {
            name: name.to_string(),
            store: self.url().to_string(),
            source: e.into(),
        })?;
        Ok(Some(CurrentManifest { sealed, version }))
    }

    /// Writes the manifest of `name` only if the stored one is still
    /// `expected`; [`Error::PushConflict`] (and nothing written) otherwise.
    pub async fn put_manifest_if(
        &self,
        name: &str,
        sealed: &SealedManifest,
        expected: &ManifestVersion,
    ) -> Result<()> {
        check_image_name(name)?;
        let body = Bytes::from(sealed.encode());
        match self.local_dir() {
            Some(dir) => self.put_local_if(dir, name, body, expected).await,
            None => self.put_conditional(name, body, expected).await,
        }
    }

    fn conflict(&self, name: &str) -> Error {
        Error::PushConflict {
            name: name.to_string(),
            store: self.url().to_string(),
        }
    }

    /// The store's own conditional put.
    async fn put_conditional(
        &self,
        name: &str,
        body: Bytes,
        expected: &ManifestVersion,
    ) -> Result<()> {
        let mode = match expected {
            ManifestVersion::Absent => PutMode::Create,
            ManifestVersion::Present { e_tag, version } => PutMode::Update(UpdateVersion {
                e_tag: e_tag.clone(),
                version: version.clone(),
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .object_store()
            .put_opts(
                &self.path(MANIFESTS, name),
                PutPayload::from_bytes(body),
                opts,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(self.conflict(name)),
            Err(e) => Err(Error::store(
                "writing",
                format!("{MANIFESTS}/{name}"),
                self.url(),
                e,
            )),
        }
    }

    /// Compare-and-write under an exclusive `flock` of the store directory's
    /// `.manifests.lock`.
    async fn put_local_if(
        &self,
        dir: PathBuf,
        name: &str,
        body: Bytes,
        expected: &ManifestVersion,
    ) -> Result<()> {
        let lock_path = dir.join(".manifests.lock");
        let lock = tokio::task::spawn_blocking(move || lock_exclusive(&lock_path))
            .await
            .map_err(|e| Error::LocalLock {
                path: dir.join(".manifests.lock"),
                source: e.into(),
            })??;
        let path = self.path(MANIFESTS, name);
        let now = match self.object_store().head(&path).await {
            Ok(meta) => ManifestVersion::Present {
                e_tag: meta.e_tag,
                version: meta.version,
            },
            Err(object_store::Error::NotFound { .. }) => ManifestVersion::Absent,
            Err(e) => {
                return Err(Error::store(
                    "checking",
                    format!("{MANIFESTS}/{name}"),
                    self.url(),
                    e,
                ));
            }
        };
        if now != *expected {
            return Err(self.conflict(name));
        }
        let r = self.put_under(MANIFESTS, name, body).await.map(drop);
        drop(lock);
        r
    }

    /// Keeps a copy of the replaced manifest `old` of `name` under
    /// `retired/NAME/SECS-DIGEST`.
    pub async fn retire(
        &self,
        name: &str,
        old: &SealedManifest,
        crypto: &dyn chunk_core::CryptoProvider,
    ) -> Result<RetiredVersion> {
        check_image_name(name)?;
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let digest = hex::encode(&old.public_digest(crypto)[..8]);
        let object = format!("{secs}-{digest}");
        self.put_under(
            &format!("{RETIRED}/{name}"),
            &object,
            Bytes::from(old.encode()),
        )
        .await?;
        Ok(RetiredVersion {
            object,
            retired_at: secs,
            digest,
        })
    }

    /// The retired versions of `name`, oldest first.
    pub async fn retired_versions(&self, name: &str) -> Result<Vec<RetiredVersion>> {
        check_image_name(name)?;
        let mut v: Vec<RetiredVersion> = self
            .list_under(&format!("{RETIRED}/{name}"))
            .await?
            .iter()
            .filter_map(|o| RetiredVersion::parse(&o.name))
            .collect();
        v.sort_by(|a, b| (a.retired_at, &a.digest).cmp(&(b.retired_at, &b.digest)));
        Ok(v)
    }
}

/// Opens (creating) `path` and takes an exclusive `flock` on it; the lock
/// lasts as long as the returned file.
fn lock_exclusive(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let err = |source: std::io::Error| Error::LocalLock {
        path: path.to_path_buf(),
        source: source.into(),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(err)?;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(err(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_names_parse_and_age() {
        let v = RetiredVersion::parse("1700000000-0123456789abcdef").unwrap();
        assert_eq!(
            (v.retired_at, v.digest.as_str()),
            (1_700_000_000, "0123456789abcdef")
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_060);
        assert_eq!(v.age(at), Duration::from_secs(60));
        for bad in [
            "x-0123456789abcdef",
            "1700000000",
            "1700000000-0123",
            "1-zz23456789abcdef",
        ] {
            assert_eq!(RetiredVersion::parse(bad), None, "{bad}");
        }
    }
}
