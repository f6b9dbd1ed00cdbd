//! Errors of `manifest`.
//!
//! No variant carries key material: chunk keys, data keys and wrapped blobs
//! never appear in messages or `Debug` output.

use kms_envelope::EncryptionContext;

/// Everything that can go wrong while sealing, decoding or opening a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ends before a field is complete.
    #[error("truncated manifest: {field} at byte {offset} needs {needed} bytes, {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where it starts.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },

    /// The input does not start with the manifest magic `LODM`.
    #[error("not a lode manifest: bad magic")]
    BadMagic,

    /// The manifest uses a format version this build cannot read.
    #[error(
        "unsupported manifest format version {found} (this build reads versions 1 to {supported})"
    )]
    UnsupportedVersion {
        /// The version in the input.
        found: u16,
        /// The newest version this build reads (and the one it writes).
        supported: u16,
    },

    /// A field is present but its value is not allowed (not canonical, out of
    /// range, inconsistent).
    #[error("malformed manifest: {field} at byte {offset}: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// Where it starts.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },

    /// The KMS has no key with the id stored in the manifest (wrong KMS or
    /// keyring for this image).
    #[error("wrong KMS key: the KMS does not know key {key_id:?}")]
    WrongKey {
        /// The key id stored in the manifest.
        key_id: String,
        /// What the KMS said.
        #[source]
        source: kms_envelope::Error,
    },

    /// The KMS refused to unwrap the data key: the key of that id has other
    /// material (another keyring or account), the caller may not use it, or
    /// the stored encryption context or wrapped key was altered. The KMS
    /// deliberately does not say which.
    #[error("unwrapping its data key")]
    Unwrap {
        /// The key id stored in the manifest.
        key_id: String,
        /// What the KMS said.
        #[source]
        source: kms_envelope::Error,
    },

    /// The manifest is bound to another encryption context than the caller
    /// expects (for example another image's name).
    #[error("wrong encryption context: manifest is bound to {found:?}, expected {expected:?}")]
    WrongContext {
        /// What the caller expected.
        expected: EncryptionContext,
        /// What the manifest carries.
        found: EncryptionContext,
    },

    /// The sealed image config authenticated but does not decode: the
    /// manifest was sealed by a broken writer.
    #[error("malformed image config in the sealed part: {field} at byte {offset}: {reason}")]
    MalformedConfig {
        /// The config field being read.
        field: &'static str,
        /// Byte offset in the config encoding.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },

    /// The data key unwrapped but the sealed keys do not authenticate: the
    /// public part, the key table or the envelope was altered.
    #[error("tampered manifest: the sealed chunk keys do not authenticate against the public part")]
    Tampered,

    /// Another KMS failure (transport, configuration, service error) while
    /// wrapping or unwrapping this manifest's data key.
    #[error("KMS error while {operation} the data key under key {key_id:?}")]
    Kms {
        /// The key id the KMS was asked to use.
        key_id: String,
        /// `"generating"` (sealing), `"wrapping"` (re-wrapping) or
        /// `"unwrapping"` (opening).
        operation: &'static str,
        /// What the KMS said.
        #[source]
        source: kms_envelope::Error,
    },

    /// The crypto backend failed to seal the chunk keys (for example it
    /// could not run AES-256-GCM).
    #[error("crypto backend failed while {operation} the chunk keys")]
    Crypto {
        /// What was being done (`sealing`).
        operation: &'static str,
        /// What the backend reported.
        #[source]
        source: chunk_core::Error,
    },

    /// A manifest to seal is not valid.
    #[error("invalid manifest: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
