//! Errors of `kms-envelope`.
//!
//! No variant carries key material: wrapped blobs, data keys and master keys
//! never appear in messages or `Debug` output. Encryption contexts are not
//! secret (AWS logs them in CloudTrail), but no variant needs them either.

use std::path::PathBuf;

/// Everything that can go wrong while generating, wrapping or unwrapping a data key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The KMS could not unwrap a blob: it was wrapped under another key (or
    /// another key material under the same name), the encryption context does
    /// not match the one it was wrapped with, the caller may not use the key,
    /// or the blob was altered. These causes are deliberately indistinguishable.
    #[error(
        "key {} cannot unwrap it: a keyring or key other than the one it was wrapped with, no access to the key, or an altered manifest",
        key_id.as_deref().unwrap_or("(unnamed)")
    )]
    CannotUnwrap {
        /// The key the caller asked for, when it named one.
        key_id: Option<String>,
    },

    /// The key id names no key this KMS knows.
    #[error("KMS key {key_id:?} not found")]
    KeyNotFound {
        /// The key id as given.
        key_id: String,
    },

    /// A key id or key name is not well formed.
    #[error("invalid KMS key id {key_id:?}: {reason}")]
    InvalidKeyId {
        /// The offending id (truncated to 100 characters).
        key_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A keyring file is readable or writable by group or others.
    #[error(
        "keyring {path} has mode {mode:04o}: it must not be accessible by group or others (chmod 600)"
    )]
    InsecurePermissions {
        /// The keyring file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// Reading or writing a keyring file failed.
    #[error("keyring {path}")]
    KeyringIo {
        /// The keyring file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A keyring file is not in the expected format.
    #[error("keyring {path}, line {line}: {reason}")]
    KeyringFormat {
        /// The keyring file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never quotes key material).
        reason: &'static str,
    },

    /// A key of that name already exists in the keyring.
    #[error("keyring already holds a key named {name:?}")]
    KeyExists {
        /// The key name.
        name: String,
    },

    /// Wrapping a data key under a master key failed (AES-256-GCM refused to
    /// encrypt; its error says nothing more).
    #[error("cannot wrap the data key under key {key_id:?}: {reason}")]
    Wrap {
        /// The key and version the data key was to be wrapped under.
        key_id: String,
        /// What failed.
        reason: &'static str,
    },

    /// The crypto backend's random number generator failed.
    #[error("random number generator failed")]
    Random {
        /// What the backend reported.
        #[source]
        source: chunk_core::Error,
    },

    /// AWS configuration (region, credentials, endpoint) is missing or invalid.
    #[cfg(feature = "aws")]
    #[error("AWS configuration: {reason}")]
    AwsConfig {
        /// What is missing or wrong.
        reason: String,
    },

    /// The credential chain could not produce credentials (no static
    /// credentials, and web identity, container and instance metadata
    /// credentials all unavailable or failing).
    #[cfg(feature = "aws")]
    #[error("AWS {source_name}: {reason}")]
    AwsCredentials {
        /// Where the credentials were fetched from.
        source_name: &'static str,
        /// What went wrong.
        reason: String,
        /// What the credential provider reported, when it did.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The HTTP request to AWS KMS failed before an answer came back.
    #[cfg(feature = "aws")]
    #[error("AWS KMS {operation} request to {endpoint} failed")]
    AwsTransport {
        /// The KMS operation, e.g. `GenerateDataKey`.
        operation: &'static str,
        /// The endpoint URL.
        endpoint: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },

    /// AWS KMS answered with an error not covered by a more specific variant.
    #[cfg(feature = "aws")]
    #[error("AWS KMS {operation} failed with HTTP {status}: {code}: {message}")]
    AwsService {
        /// The KMS operation.
        operation: &'static str,
        /// HTTP status code.
        status: u16,
        /// The AWS error code, e.g. `DisabledException`.
        code: String,
        /// The AWS error message.
        message: String,
    },

    /// AWS KMS answered with something that is not a valid response.
    #[cfg(feature = "aws")]
    #[error("AWS KMS {operation}: invalid response: {reason}")]
    AwsInvalidResponse {
        /// The KMS operation.
        operation: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
