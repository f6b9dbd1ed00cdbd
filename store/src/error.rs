//! Errors of `lode-store`.
//!
//! One public enum; the errors of the crates underneath (object store,
//! flattener, manifest, KMS, worker) are kept behind
//! `Box<dyn Error + Send + Sync>` and returned from
//! [`source()`](std::error::Error::source), never repeated in the message.
//! Print the whole chain (e.g. `anyhow`'s `{:#}`) to see the cause.

use std::path::PathBuf;

/// A foreign error, boxed so this crate's API does not expose other crates' types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store and the image lifecycle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An image name that object keys, file names and KMS contexts cannot all carry.
    #[error(
        "image name {name:?} is not valid: use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'"
    )]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// A size or duration that does not parse.
    #[error("{text:?}: {problem}")]
    InvalidQuantity {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A store URL that does not parse.
    #[error("store {url:?} is not valid: {reason}")]
    InvalidStoreUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key-service spec that does not parse.
    #[error("KMS {spec:?} is not valid: {reason}")]
    InvalidKmsSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store does not exist (a `file://` directory that is not there).
    #[error("store {store} does not exist (push creates it)")]
    NoStore {
        /// The store.
        store: String,
    },
    /// The store could not be opened or configured.
    #[error("opening store {store}")]
    OpenStore {
        /// The store.
        store: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// No manifest under this name.
    #[error("no image named {name:?} in {store} (see `lode ls`)")]
    ImageNotFound {
        /// Image name.
        name: String,
        /// The store.
        store: String,
    },
    /// Another push replaced the image while this one ran.
    #[error(
        "another push of {name:?} to {store} finished first (the manifest changed since this push began); nothing was replaced: push again to replace it"
    )]
    PushConflict {
        /// Image name.
        name: String,
        /// The store.
        store: String,
    },
    /// A local lock file could not be taken.
    #[error("locking {}", path.display())]
    LocalLock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// No stored prefetch profile under this name.
    #[error("no profile for {name:?} in {store}")]
    ProfileNotFound {
        /// Image name.
        name: String,
        /// The store.
        store: String,
    },
    /// A request to the store failed.
    #[error("{op} {key} in {store}")]
    Store {
        /// What was being done (`"reading"`, `"writing"`, `"listing"`, `"deleting"`, `"checking"`).
        op: &'static str,
        /// The object or directory (relative to the store's root).
        key: String,
        /// The store.
        store: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// A manifest that does not decode.
    #[error("manifests/{name} in {store} is not a valid manifest")]
    BadManifest {
        /// Image name.
        name: String,
        /// The store.
        store: String,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },
    /// gc met a manifest it cannot read: marking would be partial, so nothing is deleted.
    #[error(
        "manifests/{name} in {store} is not a valid manifest; gc stops without deleting anything (move it away or fix it)"
    )]
    GcBadManifest {
        /// Image name.
        name: String,
        /// The store.
        store: String,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },
    /// The key service could not be configured.
    #[error("opening the key service {spec}")]
    Kms {
        /// The spec.
        spec: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Sealing a manifest (wrapping its data key) failed.
    #[error("sealing the manifest of {name} with KMS key {key_id}")]
    SealManifest {
        /// Image name.
        name: String,
        /// Master key id.
        key_id: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The key service did not open a manifest's keys.
    #[error(
        "the KMS could not open the keys of {name} (wrapped under key {key_id}): check the key service and that this role may decrypt with that key"
    )]
    OpenKeys {
        /// Image name.
        name: String,
        /// The key the data key is wrapped under.
        key_id: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The image reference or platform could not be used.
    #[error("image {image:?}")]
    ImageRef {
        /// The reference as given.
        image: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// A platform that does not parse.
    #[error("platform {platform:?} must look like linux/amd64")]
    Platform {
        /// The platform as given.
        platform: String,
    },
    /// Flattening the source image failed.
    #[error("flattening {image}")]
    Flatten {
        /// The image reference.
        image: String,
        /// The flattener's error.
        #[source]
        source: BoxError,
    },
    /// Sealing chunks failed.
    #[error("sealing chunks")]
    Seal {
        /// The crypto backend's error.
        #[source]
        source: BoxError,
    },
    /// Checking for or storing one chunk failed.
    #[error("{op} chunk {chunk} in {store}")]
    Chunk {
        /// `"checking"` or `"storing"`.
        op: &'static str,
        /// Chunk name (hex).
        chunk: String,
        /// The store.
        store: String,
        /// The tier's error.
        #[source]
        source: BoxError,
    },
    /// A push or gc lease went unrenewed so long that others may treat it as dead.
    #[error(
        "lease locks/{lease} was last renewed {age_secs}s ago (a paused process or an unreachable store); \
         a concurrent gc may have treated it as dead, so this run stops here: run it again"
    )]
    LeaseStale {
        /// Lease name under `locks/`.
        lease: String,
        /// Seconds since its last successful renewal.
        age_secs: u64,
    },
    /// The system random source failed.
    #[error("reading the system random source")]
    Random {
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Reading or writing the salt file (or another private file) failed.
    #[error("{op} {}", path.display())]
    File {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The salt file can be read by group or others.
    #[error(
        "salt file {} is accessible by group or others (mode {mode:o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    SaltMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The salt file does not parse or holds no usable salt.
    #[error("{} is not a usable lode salt file: {problem}", path.display())]
    SaltFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A prefetch profile could not be read, is not valid, or does not fit the image.
    #[error("profile {what}: {problem}")]
    Profile {
        /// Which profile (a file or `profiles/NAME in STORE`).
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// A prefetch profile that does not fit the image it is saved for.
    #[error("refusing profile {} for image {name}: {why}", file.display())]
    ProfileRefused {
        /// The profile file.
        file: PathBuf,
        /// The image.
        name: String,
        /// Why it does not fit.
        why: String,
    },
    /// A prefetch profile could not be read or decoded.
    #[error("profile {what}")]
    ProfileRead {
        /// Which profile.
        what: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The cache tiers could not be set up.
    #[error("{what}")]
    Tiers {
        /// What was being set up.
        what: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// A sealed image could not be opened for serving.
    #[error("opening image {name}")]
    OpenImage {
        /// Image name.
        name: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The spool directory for flattening does not exist.
    #[error(
        "spool directory {} does not exist (--spool-dir, LODE_SPOOL_DIR or TMPDIR)",
        path.display()
    )]
    SpoolDir {
        /// The directory.
        path: PathBuf,
    },
    /// A pipeline stage stopped abnormally (a thread panicked or could not start).
    #[error("the {stage} stage of the push failed: {problem}")]
    Pipeline {
        /// `"flatten"`, `"chunk"` or `"seal"`.
        stage: &'static str,
        /// What happened.
        problem: String,
    },
}

impl Error {
    pub(crate) fn store(
        op: &'static str,
        key: impl Into<String>,
        store: &str,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Store {
            op,
            key: key.into(),
            store: store.to_string(),
            source: source.into(),
        }
    }

    pub(crate) fn file(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::File {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn random(source: impl Into<BoxError>) -> Self {
        Self::Random {
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// Every variant with a source leaves it out of its own message.
    #[test]
    fn messages_do_not_repeat_their_source() {
        let io = || std::io::Error::other("disk on fire");
        let cases = [
            Error::store("reading", "manifests/a", "memory://", io()),
            Error::file("writing", std::path::Path::new("/x"), io()),
            Error::Flatten {
                image: "oci:x".into(),
                source: io().into(),
            },
        ];
        for e in cases {
            assert!(e.source().is_some(), "{e}");
            assert!(!e.to_string().contains("disk on fire"), "{e}");
        }
    }
}
