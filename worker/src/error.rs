//! Errors of `worker`.

use std::path::PathBuf;
use std::sync::Arc;

use chunk_core::ChunkName;

/// Why one chunk could not be served. Shared (in an [`Arc`]) between all
/// readers that waited for the same fetch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// No tier could deliver the chunk (missing, unreachable, timed out).
    #[error("fetch failed")]
    Fetch(#[source] SourceError),
    /// The bytes a tier returned do not hash to the chunk's name.
    #[error("bytes from tier {tier} do not match the chunk name (got SHA-256 {actual})")]
    NameMismatch {
        /// The tier that answered.
        tier: String,
        /// SHA-256 of what it returned.
        actual: ChunkName,
    },
    /// AES-GCM refused the ciphertext: wrong key (stale or wrong KMS key,
    /// manifest mismatch) or corrupted bytes.
    #[error("decryption failed (bytes from tier {tier}): wrong key or corrupted chunk")]
    Decrypt {
        /// The tier that answered.
        tier: String,
        /// What chunk-core reported.
        #[source]
        source: chunk_core::Error,
    },
    /// The plaintext has a length that does not fit the chunk table.
    #[error("plaintext is {actual} bytes, expected {expected}")]
    WrongLength {
        /// Expected plaintext length.
        expected: usize,
        /// Actual plaintext length.
        actual: usize,
    },
    /// No tier answered within the fetch timeout (store unreachable or hanging).
    #[error("no answer within {after:?}")]
    Timeout {
        /// The timeout that expired.
        after: std::time::Duration,
    },
    /// The background task that fetched the chunk died (runtime shut down).
    #[error("fetch task ended without a result: {0}")]
    TaskFailed(String),
}

/// An error reported by a [`ChunkSource`](crate::ChunkSource).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// No tier holds the chunk.
    #[error("chunk {name} not found in any tier")]
    NotFound {
        /// The chunk asked for.
        name: ChunkName,
    },
    /// A tier failed (I/O, network, timeout).
    #[error("tier {tier} failed")]
    Tier {
        /// Label of the failing tier.
        tier: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// Everything that can go wrong in the worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A chunk could not be fetched, verified or decrypted.
    #[error("chunk {index} ({name}) at image offset {offset}: {source}")]
    Chunk {
        /// Index of the chunk in the image.
        index: u64,
        /// Its name.
        name: ChunkName,
        /// Image offset where the chunk starts.
        offset: u64,
        /// What went wrong.
        #[source]
        source: Arc<ChunkError>,
    },
    /// A chunk index outside the image.
    #[error("chunk index {index} is outside the image ({chunks} chunks)")]
    NoSuchChunk {
        /// Requested index.
        index: u64,
        /// Number of chunks.
        chunks: u64,
    },
    /// The chunk table is inconsistent (sizes, counts).
    #[error("invalid chunk table: {reason}")]
    InvalidTable {
        /// What is inconsistent.
        reason: String,
    },
    /// Opening a sealed manifest failed.
    #[error("opening the manifest failed")]
    Manifest(#[source] manifest::Error),
    /// `LazyImage::new` was called outside a tokio runtime.
    #[error("no tokio runtime: create the LazyImage inside one or pass a handle")]
    NoRuntime,
    /// A blocking call was made from inside the async runtime.
    #[error("blocking read called from inside the tokio runtime; use read_at().await")]
    BlockingInRuntime,
    /// A file-system or device operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Mounting or unmounting failed for a reason that is not a plain OS error.
    #[error("{0}")]
    Mount(String),
    /// `unmount` found no lode mount at this path.
    #[error("no lode mount at {}", .0.display())]
    NotMounted(PathBuf),
    /// A prefetch profile is malformed.
    #[error("prefetch profile {what}: {problem}")]
    Profile {
        /// Which profile (a file path, `profiles/NAME`).
        what: String,
        /// What is wrong with it (printed here, not a `source()`).
        problem: ProfileProblem,
    },
    /// The image's ext4 inode tables could not be read (profile recording).
    #[error("reading the image's ext4 inode tables: {reason}")]
    InodeTables {
        /// What was wrong.
        reason: String,
    },
    /// The daemon exited or failed before it was ready.
    #[error("mount daemon failed: {0}")]
    Daemon(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// What [`Profile::validate`](crate::profile::Profile::validate) found wrong
/// with a profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileProblem {
    /// Not JSON of a profile's shape.
    #[error("not a valid profile: {0}")]
    Json(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A format version this build does not read.
    #[error("version {found} is not supported (this lode reads version {supported})")]
    Version {
        /// The profile's version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// `chunk_size` is 0.
    #[error("chunk_size is 0")]
    ZeroChunkSize,
    /// `manifest_digest` is not 64 lowercase hex digits.
    #[error("manifest_digest {0:?} is not 64 lowercase hex digits")]
    Digest(String),
    /// A chunk index past the image's end.
    #[error("chunk index {index} is outside the image ({chunks} chunks)")]
    ChunkOutside {
        /// The index.
        index: u64,
        /// Chunks in the image.
        chunks: u64,
    },
    /// A chunk index listed twice.
    #[error("chunk index {index} is listed twice")]
    ChunkTwice {
        /// The index.
        index: u64,
    },
    /// Access times out of order.
    #[error("chunk {index} at {at_ms} ms comes after one at {after_ms} ms")]
    TimeOrder {
        /// The chunk listed out of order.
        index: u64,
        /// Its time.
        at_ms: u64,
        /// The time of the one before it.
        after_ms: u64,
    },
    /// A kernel readahead hint above the maximum.
    #[error("kernel_readahead_kb {kb} is larger than {max}")]
    Readahead {
        /// The hint.
        kb: u32,
        /// The maximum.
        max: u32,
    },
    /// A file path that does not start with `/`.
    #[error("file path {0:?} is not absolute")]
    RelativePath(String),
    /// A file's block range that is empty or past the image's end.
    #[error("file {path:?}: block range [{first}, {count}] is empty or too large")]
    BlockRange {
        /// The file.
        path: String,
        /// First 4 KiB block.
        first: u64,
        /// Block count.
        count: u64,
    },
}

/// Why a valid profile does not fit an image
/// ([`Profile::check_image`](crate::profile::Profile::check_image)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileMismatch {
    /// Recorded on another manifest of the image (it was pushed again).
    #[error(
        "it was recorded on manifest {recorded} of {image:?}, but the manifest is now {now} \
         (the image was pushed again): record a new profile"
    )]
    Manifest {
        /// The image name the profile names.
        image: String,
        /// Short digest of the manifest it was recorded on.
        recorded: String,
        /// Short digest of the current manifest.
        now: String,
    },
    /// Another image size or chunk size.
    #[error(
        "it describes an image of {} bytes in chunks of {}, the manifest one of {} in chunks of {}",
        recorded.0, recorded.1, now.0, now.1
    )]
    Geometry {
        /// (image size, chunk size) of the profile.
        recorded: (u64, u32),
        /// (image size, chunk size) of the manifest.
        now: (u64, u32),
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
