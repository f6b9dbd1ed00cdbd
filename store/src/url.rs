//! Where the store and the key service are: `file:///abs`, `s3://bucket/prefix`
//! or `memory://`; `local:/path/to/keyring[#key]` or `aws:KEY_ID`.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where chunks, manifests, profiles and leases live.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// A local directory.
    File(PathBuf),
    /// An S3 bucket (endpoint and credentials from the standard AWS environment).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket, without leading or trailing `/`.
        prefix: String,
    },
    /// A process-local store that lives as long as the [`Store`](crate::Store) (tests, examples).
    Memory,
}

impl StoreUrl {
    /// Parses `file:///abs/path`, `s3://bucket[/prefix]` or `memory://`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidStoreUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a file store needs an absolute path, as in file:///var/lib/lode",
                ));
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name"));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if url == "memory://" || url == "memory:" {
            return Ok(Self::Memory);
        }
        Err(bad("use file:///abs/path, s3://bucket/prefix or memory://"))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "file://{}", p.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Self::Memory => f.write_str("memory://"),
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Which key service wraps manifest data keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsUrl {
    /// A local keyring file and the key name in it.
    Local {
        /// Keyring path.
        path: PathBuf,
        /// Master key name.
        key: String,
    },
    /// AWS KMS with this key id or ARN.
    Aws {
        /// Key id, alias or ARN.
        key_id: String,
    },
}

impl KmsUrl {
    /// Parses `local:/path[#key]` (key `default` when omitted) or `aws:KEY`.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidKmsSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = spec.strip_prefix("local:") {
            let (path, key) = rest.split_once('#').unwrap_or((rest, "default"));
            if path.is_empty() {
                return Err(bad("no keyring path"));
            }
            return Ok(Self::Local {
                path: PathBuf::from(path),
                key: key.to_string(),
            });
        }
        if let Some(key) = spec.strip_prefix("aws:") {
            if key.is_empty() {
                return Err(bad("no key id"));
            }
            return Ok(Self::Aws {
                key_id: key.to_string(),
            });
        }
        Err(bad("use local:/path/to/keyring[#key] or aws:KEY_ID"))
    }

    /// The master key new manifests are wrapped under.
    pub fn key_id(&self) -> &str {
        match self {
            Self::Local { key, .. } => key,
            Self::Aws { key_id } => key_id,
        }
    }
}

impl fmt::Display for KmsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local { path, key } => write!(f, "local:{}#{key}", path.display()),
            Self::Aws { key_id } => write!(f, "aws:{key_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("file:///var/lib/lode").unwrap(),
            StoreUrl::File("/var/lib/lode".into())
        );
        assert_eq!(
            StoreUrl::parse("s3://b/p/q/").unwrap(),
            StoreUrl::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(StoreUrl::parse("memory://").unwrap(), StoreUrl::Memory);
        for url in ["file:///x", "s3://b/p", "s3://b", "memory://"] {
            assert_eq!(StoreUrl::parse(url).unwrap().to_string(), url);
        }
        for bad in ["file://rel", "s3://", "http://x", ""] {
            let e = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn kms_specs() {
        let k = KmsUrl::parse("local:/k/ring").unwrap();
        assert_eq!(k.key_id(), "default");
        assert_eq!(k.to_string(), "local:/k/ring#default");
        assert_eq!(KmsUrl::parse("aws:alias/x").unwrap().key_id(), "alias/x");
        for bad in ["local:", "aws:", "gcp:x"] {
            assert!(KmsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
