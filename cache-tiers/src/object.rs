//! L3: the object store, the authority.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use zeroize::Zeroizing;

use crate::{CacheKey, Error, Result, Tier};

/// How transient errors are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles each retry, with full jitter.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
    /// Limit of one attempt; an attempt that runs longer counts as transient.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy with these attempts and backoffs (attempt timeout 30 s).
    pub fn new(max_attempts: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_backoff,
            max_backoff,
            ..Self::default()
        }
    }

    /// Sets the limit of one attempt.
    pub fn with_attempt_timeout(mut self, t: Duration) -> Self {
        self.attempt_timeout = t;
        self
    }

    /// Full-jitter exponential backoff before retry number `retry` (1-based).
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let cap = exp.min(self.max_backoff);
        cap.mul_f64(fastrand::f64())
    }
}

/// Where an S3-compatible store is and how to sign for it.
///
/// The secret is held in a [`Zeroizing`] string (wiped when the config is
/// dropped) and `Debug` prints `<redacted>` in its place. `object_store`
/// keeps its own copy inside the built client.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`; `None` = AWS.
    pub endpoint: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Region (any value for most S3-compatible servers).
    pub region: String,
    /// Access key id; `None` = from the environment or instance metadata.
    pub access_key_id: Option<String>,
    /// Secret access key (never printed by `Debug`).
    pub secret_access_key: Option<Zeroizing<String>>,
    /// Session token of temporary credentials (STS, SSO, assumed roles;
    /// never printed by `Debug`).
    pub session_token: Option<Zeroizing<String>>,
    /// Start from the standard AWS environment (`object_store`'s
    /// `AmazonS3Builder::from_env`): `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`, web identity and container credentials. Fields set
    /// here win over the environment; an empty `region` and a `None`
    /// endpoint or credentials leave the environment's. Without any
    /// credentials `object_store` asks the instance metadata service.
    pub from_env: bool,
    /// Allow plain `http://` endpoints (loopback test servers).
    pub allow_http: bool,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Timeout of connecting.
    pub connect_timeout: Duration,
}

impl S3Config {
    /// A config for `bucket` at `endpoint` (path-style, http allowed when the
    /// URL says `http://`), region `us-east-1`, credentials to be set.
    pub fn new(endpoint: impl Into<String>, bucket: impl Into<String>) -> Self {
        let endpoint = endpoint.into();
        Self {
            allow_http: endpoint.starts_with("http://"),
            endpoint: Some(endpoint),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            from_env: false,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// A config for `bucket` with region, endpoint and credentials from the
    /// standard AWS environment variables (see [`from_env`](Self::from_env)
    /// the field). A plain `http://` endpoint is allowed, as the user chose it.
    ///
    /// ```
    /// use cache_tiers::S3Config;
    /// let config = S3Config::from_env("my-chunks");
    /// assert!(config.from_env && config.region.is_empty() && config.endpoint.is_none());
    /// ```
    pub fn from_env(bucket: impl Into<String>) -> Self {
        Self {
            endpoint: None,
            region: String::new(),
            allow_http: false,
            from_env: true,
            ..Self::new("", bucket)
        }
    }

    /// Sets a session token for temporary credentials (use with
    /// [`with_credentials`](Self::with_credentials)).
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(Zeroizing::new(token.into()));
        self
    }

    /// Sets static credentials.
    pub fn with_credentials(
        mut self,
        key_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(key_id.into());
        self.secret_access_key = Some(Zeroizing::new(secret.into()));
        self
    }

    /// Sets the request and connect timeouts.
    pub fn with_timeouts(mut self, request: Duration, connect: Duration) -> Self {
        self.request_timeout = request;
        self.connect_timeout = connect;
        self
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<Zeroizing<String>>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("from_env", &self.from_env)
            .field("allow_http", &self.allow_http)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// An object listed by [`ObjectStoreTier::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectInfo {
    /// The storage name of the key (the path without the prefix).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Values as objects `<prefix><storage name>` in an [`ObjectStore`]: a local
/// directory, memory, or S3 and S3-compatible servers.
///
/// - Values are content addressed, so a put is create-if-absent
///   ([`PutMode::Create`]) and "already exists" counts as success.
/// - Transient errors (HTTP 5xx, 429, 408, timeouts, refused or reset
///   connections) are retried with exponential backoff and full jitter
///   ([`RetryPolicy`]); permanent ones (4xx, permission, bad path, and every
///   local error such as a full disk or EIO) and exhausted retries are
///   reported as [`Error::ObjectStore`] with the key and the number of attempts.
/// - Not found is a miss (`Ok(None)`), except when the bucket itself is
///   missing (S3 `NoSuchBucket`), which is an error.
#[derive(Debug, Clone)]
pub struct ObjectStoreTier {
    name: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    retry: RetryPolicy,
    max_object_size: Option<u64>,
}

/// Whether an object-store error is worth retrying: only transport and
/// server-side trouble (timeouts, refused or reset connections, HTTP 5xx,
/// 429, 408). Local errors (a full disk, EIO, permissions, a path that is a
/// file) and anything unrecognised are reported at once.
fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::Generic { store, source } => is_transient_generic(store, source.as_ref()),
        _ => false,
    }
}

fn is_transient_generic(store: &str, source: &(dyn std::error::Error + 'static)) -> bool {
    // The HTTP status is only visible in the message ("... status code: 503 ...").
    if let Some(code) = status_in(&error_text(source)) {
        return code >= 500 || code == 429 || code == 408;
    }
    let local = matches!(store, "LocalFileSystem" | "InMemory");
    let mut cur = Some(source);
    while let Some(e) = cur {
        if e.is::<AttemptTimedOut>() {
            return true;
        }
        if let Some(h) = e.downcast_ref::<object_store::client::HttpError>() {
            // No status was seen (checked above), so the request never got
            // an answer: a transport failure. Every operation of this tier
            // is idempotent (names are content hashes), so each is retried,
            // including kinds object_store leaves `Unknown`, such as hyper's
            // `Canceled` "connection was not ready" when a pooled connection
            // closed between checkout and use. Only an answer that could not
            // be decoded is final.
            use object_store::client::HttpErrorKind as K;
            return !matches!(h.kind(), K::Decode);
        }
        if !local && let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::TimedOut
                    | K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe
                    | K::UnexpectedEof
            ) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// An attempt that ran past [`RetryPolicy::attempt_timeout`].
#[derive(Debug)]
struct AttemptTimedOut(Duration);

impl std::fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attempt timed out after {:?}", self.0)
    }
}

impl std::error::Error for AttemptTimedOut {}

/// Not found, and not because the bucket is missing: a misconfigured bucket
/// must be an error, not a store where every read misses.
fn is_missing_object(e: &Error) -> bool {
    match e {
        Error::ObjectStore { source, .. }
            if matches!(
                source.downcast_ref::<object_store::Error>(),
                Some(object_store::Error::NotFound { .. })
            ) =>
        {
            !error_text(source.as_ref()).contains("NoSuchBucket")
        }
        _ => false,
    }
}

/// An error's message with those of its sources.
fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(" | ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// The first HTTP status code named as "status code: NNN" or "status: NNN".
fn status_in(text: &str) -> Option<u16> {
    for marker in ["status code: ", "status: "] {
        if let Some(i) = text.find(marker) {
            let digits: String = text[i + marker.len()..].chars().take(3).collect();
            if let Ok(code) = digits.parse::<u16>()
                && (100..600).contains(&code)
            {
                return Some(code);
            }
        }
    }
    None
}

impl ObjectStoreTier {
    /// A tier over any object store. `prefix` is put before every key's
    /// storage name, e.g. `"chunks/"`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
        Self {
            name: "object-store".into(),
            store,
            prefix: prefix.into(),
            retry: RetryPolicy::default(),
            max_object_size: None,
        }
    }

    /// In process memory (tests, examples).
    pub fn in_memory(prefix: impl Into<String>) -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()), prefix)
    }

    /// In a local directory, created if missing.
    pub fn local(dir: impl AsRef<std::path::Path>, prefix: impl Into<String>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            tier: "object-store".into(),
            key: dir.display().to_string(),
            op: "create directory",
            source,
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            Error::InvalidConfig {
                reason: format!("local object store at {}: {e}", dir.display()),
            }
        })?;
        Ok(Self::new(Arc::new(fs), prefix))
    }

    /// On S3 or an S3-compatible server. `object_store`'s own retries are
    /// turned off; this tier's [`RetryPolicy`] applies instead. With
    /// [`S3Config::from_env`] the standard AWS environment fills in what the
    /// config leaves unset.
    pub fn s3(config: &S3Config, prefix: impl Into<String>) -> Result<Self> {
        use object_store::ClientConfigKey as Client;
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as Key};
        let mut b = if config.from_env {
            AmazonS3Builder::from_env()
        } else {
            AmazonS3Builder::new()
        };
        b = b
            .with_bucket_name(&config.bucket)
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            });
        if !config.region.is_empty() {
            b = b.with_region(&config.region);
        }
        if let Some(ep) = &config.endpoint {
            // Also over AWS_ENDPOINT_URL_S3, which object_store prefers.
            b = b
                .with_endpoint(ep)
                .with_config(Key::S3Endpoint, ep)
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            b = b
                .with_access_key_id(id)
                .with_secret_access_key(secret.as_str());
        }
        if let Some(token) = &config.session_token {
            b = b.with_token(token.as_str());
        }
        // Plain http when the config says so, or the environment does
        // (AWS_ALLOW_HTTP, or an http:// endpoint it names).
        let endpoint = b
            .get_config_value(&Key::S3Endpoint)
            .or_else(|| b.get_config_value(&Key::Endpoint))
            .unwrap_or_default();
        let allow_http = config.allow_http
            || (config.from_env
                && (endpoint.starts_with("http://")
                    || b.get_config_value(&Key::Client(Client::AllowHttp))
                        .as_deref()
                        == Some("true")));
        // Set key by key: with_client_options would drop client settings
        // from the environment (proxy, certificates).
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        b = b
            .with_allow_http(allow_http)
            .with_config(Key::Client(Client::Timeout), ms(config.request_timeout))
            .with_config(
                Key::Client(Client::ConnectTimeout),
                ms(config.connect_timeout),
            );
        let s3 = b.build().map_err(|e| Error::InvalidConfig {
            reason: format!("S3 bucket {}: {e}", config.bucket),
        })?;
        Ok(Self::new(Arc::new(s3), prefix))
    }

    /// Renames the tier (for stats and errors).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Refuses to read an object larger than `max` bytes: such a get fails
    /// with [`Error::ValueTooLarge`] (naming the key) before any of its body
    /// is read, so a hostile or broken store cannot make a reader buffer a
    /// huge object under a small value's name. Without a limit, gets read
    /// whatever is stored.
    pub fn with_max_object_size(mut self, max: u64) -> Self {
        self.max_object_size = Some(max);
        self
    }

    /// The limit set by [`with_max_object_size`](Self::with_max_object_size).
    pub fn max_object_size(&self) -> Option<u64> {
        self.max_object_size
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The object path of `key`.
    pub fn path_of<K: CacheKey>(&self, key: &K) -> ObjPath {
        ObjPath::from(format!("{}{}", self.prefix, key.storage_name()))
    }

    /// Runs `op` with retries of transient errors.
    async fn retrying<T, F, Fut>(&self, key: &str, op_name: &'static str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = match tokio::time::timeout(self.retry.attempt_timeout, op()).await {
                Ok(r) => r,
                Err(_) => Err(object_store::Error::Generic {
                    store: "cache-tiers",
                    source: Box::new(AttemptTimedOut(self.retry.attempt_timeout)),
                }),
            };
            match r {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && attempt < self.retry.max_attempts => {
                    let wait = self.retry.backoff(attempt);
                    tracing::debug!(tier = %self.name, key, op = op_name, attempt, ?wait, error = &e as &dyn std::error::Error, "transient object-store error; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(source) => {
                    return Err(Error::ObjectStore {
                        tier: self.name.clone(),
                        key: key.to_owned(),
                        op: op_name,
                        attempts: attempt,
                        source: Box::new(source),
                    });
                }
            }
        }
    }

    /// Size of the object of `key`, or `None` if absent.
    pub async fn head<K: CacheKey>(&self, key: &K) -> Result<Option<u64>> {
        let path = self.path_of(key);
        let r = self
            .retrying(&key.storage_name(), "head", || self.store.head(&path))
            .await;
        match r {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if is_missing_object(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the object of `key` exists.
    pub async fn exists<K: CacheKey>(&self, key: &K) -> Result<bool> {
        Ok(self.head(key).await?.is_some())
    }

    /// The keys of `keys` that are not stored, asking up to `concurrency` at
    /// once (for "upload only what is missing").
    pub async fn missing<K: CacheKey>(&self, keys: &[K], concurrency: usize) -> Result<Vec<K>> {
        let found: Vec<(usize, bool)> = futures::stream::iter(keys.iter().enumerate())
            .map(|(i, k)| async move { self.exists(k).await.map(|e| (i, e)) })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        let mut missing: Vec<usize> = found
            .into_iter()
            .filter(|(_, e)| !e)
            .map(|(i, _)| i)
            .collect();
        missing.sort_unstable();
        Ok(missing.into_iter().map(|i| keys[i].clone()).collect())
    }

    /// Stores `value` under `key` even when an object is already there
    /// (a [`Tier::put`] keeps what is stored): for repairing an object
    /// found damaged, e.g. of the wrong size.
    pub async fn replace<K: CacheKey>(&self, key: &K, value: Bytes) -> Result<()> {
        let path = self.path_of(key);
        self.retrying(&key.storage_name(), "put", || {
            let opts = PutOptions {
                mode: PutMode::Overwrite,
                ..Default::default()
            };
            self.store
                .put_opts(&path, PutPayload::from_bytes(value.clone()), opts)
        })
        .await
        .map(drop)
    }

    /// Every object under the prefix (for garbage collection).
    pub async fn list(&self) -> Result<Vec<ObjectInfo>> {
        let prefix = self.prefix.trim_end_matches('/');
        let prefix_path = (!prefix.is_empty()).then(|| ObjPath::from(prefix));
        let metas: Vec<object_store::ObjectMeta> = self
            .retrying(prefix, "list", || {
                self.store
                    .list(prefix_path.as_ref())
                    .try_collect::<Vec<_>>()
            })
            .await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.as_ref();
                let name = full.strip_prefix(self.prefix.as_str())?;
                Some(ObjectInfo {
                    name: name.to_owned(),
                    size: m.size,
                })
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl<K: CacheKey> Tier<K, Bytes> for ObjectStoreTier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, key: &K) -> Result<Option<Bytes>> {
        let path = self.path_of(key);
        let limit = self.max_object_size;
        let r = self
            .retrying(&key.storage_name(), "get", || async {
                let res = self.store.get(&path).await?;
                // The size is the object's metadata (a file's length, the
                // response's Content-Length, which the HTTP client enforces
                // on the body), known before any of the body is read.
                if let Some(max) = limit
                    && res.meta.size > max
                {
                    return Ok(Err(res.meta.size));
                }
                res.bytes().await.map(Ok)
            })
            .await;
        match r {
            Ok(Ok(b)) => Ok(Some(b)),
            Ok(Err(size)) => Err(Error::ValueTooLarge {
                tier: self.name.clone(),
                key: key.storage_name().into_owned(),
                size: usize::try_from(size).unwrap_or(usize::MAX),
                limit: usize::try_from(limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX),
            }),
            Err(e) if is_missing_object(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, key: &K, value: Bytes) -> Result<()> {
        let path = self.path_of(key);
        let r = self
            .retrying(&key.storage_name(), "put", || {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                self.store
                    .put_opts(&path, PutPayload::from_bytes(value.clone()), opts)
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(Error::ObjectStore { source, .. })
                if matches!(
                    source.downcast_ref::<object_store::Error>(),
                    Some(
                        object_store::Error::AlreadyExists { .. }
                            | object_store::Error::Precondition { .. }
                    )
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn remove(&self, key: &K) -> Result<()> {
        let path = self.path_of(key);
        let r = self
            .retrying(&key.storage_name(), "delete", || self.store.delete(&path))
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(Error::ObjectStore { source, .. })
                if matches!(
                    source.downcast_ref::<object_store::Error>(),
                    Some(object_store::Error::NotFound { .. })
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_found_in_messages() {
        assert_eq!(
            status_in("Server returned non-2xx status code: 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(
            status_in("Server returned non-2xx status code: 403 Forbidden"),
            Some(403)
        );
        assert_eq!(status_in("error sending request"), None);
    }

    fn generic(
        store: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> object_store::Error {
        object_store::Error::Generic {
            store,
            source: Box::new(source),
        }
    }

    #[test]
    fn only_transport_and_server_errors_are_transient() {
        use object_store::client::{HttpError, HttpErrorKind};
        use std::io::{Error as IoError, ErrorKind};
        let http = |kind| generic("S3", HttpError::new(kind, IoError::other("x")));
        assert!(is_transient(&http(HttpErrorKind::Connect)));
        assert!(is_transient(&http(HttpErrorKind::Timeout)));
        assert!(is_transient(&http(HttpErrorKind::Interrupted)));
        assert!(!is_transient(&http(HttpErrorKind::Decode)));
        // A pooled connection closed before use: hyper reports `Canceled`
        // ("connection was not ready"), which object_store calls Unknown.
        assert!(is_transient(&generic(
            "S3",
            HttpError::new(
                HttpErrorKind::Unknown,
                IoError::other("operation was canceled: connection was not ready")
            )
        )));
        assert!(is_transient(&http(HttpErrorKind::Request)));
        assert!(is_transient(&generic(
            "S3",
            IoError::other("Server returned non-2xx status code: 503 Service Unavailable")
        )));
        assert!(is_transient(&generic(
            "S3",
            IoError::other("status code: 429 Slow Down")
        )));
        assert!(!is_transient(&generic(
            "S3",
            IoError::other("status code: 403 Forbidden")
        )));
        assert!(is_transient(&generic(
            "S3",
            IoError::from(ErrorKind::ConnectionReset)
        )));
        assert!(is_transient(&generic(
            "cache-tiers",
            AttemptTimedOut(Duration::from_secs(1))
        )));
        // Local trouble is reported at once, whatever the io error kind.
        for kind in [
            ErrorKind::StorageFull,
            ErrorKind::PermissionDenied,
            ErrorKind::NotADirectory,
            ErrorKind::Other,
            ErrorKind::TimedOut,
        ] {
            assert!(
                !is_transient(&generic("LocalFileSystem", IoError::from(kind))),
                "{kind:?}"
            );
        }
        assert!(!is_transient(&generic(
            "S3",
            IoError::other("no status, no transport error")
        )));
    }

    #[tokio::test]
    async fn a_local_filesystem_error_is_reported_at_once_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        // "chunks" is a file, so no object can be created under "chunks/".
        std::fs::write(dir.path().join("chunks"), b"not a directory").unwrap();
        let t = ObjectStoreTier::local(dir.path(), "chunks/")
            .unwrap()
            .with_retry(RetryPolicy::new(
                5,
                Duration::from_secs(5),
                Duration::from_secs(5),
            ));
        let start = std::time::Instant::now();
        let err = Tier::put(&t, &"abc".to_string(), Bytes::from_static(b"v"))
            .await
            .unwrap_err();
        match &err {
            Error::ObjectStore {
                key, attempts, op, ..
            } => {
                assert_eq!((key.as_str(), *attempts, *op), ("abc", 1, "put"), "{err}");
            }
            other => panic!("expected an object-store error, got {other:?}"),
        }
        assert!(err.to_string().contains("abc"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "retried a local error"
        );
    }

    #[test]
    fn debug_of_s3_config_does_not_show_the_secret() {
        let c = S3Config::new("http://127.0.0.1:9000", "bucket")
            .with_credentials("AKIDEXAMPLE", "wJalrXUtnFEMI-very-secret");
        let d = format!("{c:?} {c:#?}");
        assert!(!d.contains("wJalrXUtnFEMI"), "{d}");
        assert!(d.contains("<redacted>") && d.contains("AKIDEXAMPLE"), "{d}");
        assert_eq!(
            c.secret_access_key.as_deref().map(String::as_str),
            Some("wJalrXUtnFEMI-very-secret")
        );
    }

    #[test]
    fn debug_of_s3_config_does_not_show_the_session_token() {
        let c = S3Config::from_env("b")
            .with_credentials("AKID", "secret-1")
            .with_session_token("token-2-very-secret");
        let d = format!("{c:?}");
        assert!(!d.contains("secret-1") && !d.contains("token-2"), "{d}");
        assert!(d.contains("from_env: true"), "{d}");
    }

    #[test]
    fn s3_config_builds_with_session_token_and_timeouts() {
        let c = S3Config::new("http://127.0.0.1:1", "b")
            .with_credentials("AKID", "secret")
            .with_session_token("token")
            .with_timeouts(Duration::from_millis(1500), Duration::from_secs(2));
        ObjectStoreTier::s3(&c, "chunks/").unwrap();
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let p = RetryPolicy::new(10, Duration::from_millis(10), Duration::from_millis(100));
        for retry in 1..10 {
            let b = p.backoff(retry);
            assert!(b <= Duration::from_millis(100));
            assert!(b <= Duration::from_millis(10) * (1 << (retry - 1)));
        }
    }

    #[tokio::test]
    async fn local_store_round_trip_create_if_absent_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let t = ObjectStoreTier::local(dir.path(), "chunks/").unwrap();
        let k = "abc".to_string();
        Tier::put(&t, &k, Bytes::from_static(b"v1")).await.unwrap();
        // Create-if-absent: the second put succeeds and keeps the first value.
        Tier::put(&t, &k, Bytes::from_static(b"v2")).await.unwrap();
        assert_eq!(Tier::get(&t, &k).await.unwrap().unwrap(), "v1");
        assert!(dir.path().join("chunks").join("abc").exists());
        assert_eq!(t.head(&k).await.unwrap(), Some(2));
        let keys = vec!["abc".to_string(), "zzz".to_string()];
        assert_eq!(t.missing(&keys, 4).await.unwrap(), vec!["zzz".to_string()]);
        let listed = t.list().await.unwrap();
        assert_eq!(
            listed,
            vec![ObjectInfo {
                name: "abc".into(),
                size: 2
            }]
        );
    }
}
