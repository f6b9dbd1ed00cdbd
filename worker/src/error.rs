//! Errors of `worker`.
//!
//! A variant either prints its cause in its message or returns it from
//! [`source()`](std::error::Error::source), never both: print the whole
//! chain (`anyhow`'s `{:#}`, or walk `source()`) to see every cause once.

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
    /// A chunk could not be fetched, verified or decrypted (the cause is
    /// the [`source()`](std::error::Error::source)).
    #[error("chunk {index} ({name}) at image offset {offset}")]
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
    #[error("opening the manifest")]
    Manifest(#[source] manifest::Error),
    /// `LazyImage::new` was called outside a tokio runtime.
    #[error("no tokio runtime: create the LazyImage inside one or pass a handle")]
    NoRuntime,
    /// A blocking call was made from inside the async runtime.
    #[error("blocking read called from inside the tokio runtime; use read_at().await")]
    BlockingInRuntime,
    /// A file-system or device operation failed (the OS error is the
    /// [`source()`](std::error::Error::source)).
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Mounting or unmounting at `mountpoint` failed for a reason that is
    /// not an OS error (those are [`Error::Io`], naming the step).
    #[error("{}: {problem}", mountpoint.display())]
    Mount {
        /// The mountpoint (for a FUSE-only step, the FUSE directory).
        mountpoint: PathBuf,
        /// What went wrong (printed here, not a `source()`).
        problem: MountProblem,
    },
    /// A FUSE request timeout longer than the kernel takes.
    #[error("a request timeout of {secs} s is longer than the kernel allows (65535 s)")]
    RequestTimeout {
        /// The timeout asked for, in whole seconds.
        secs: u64,
    },
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
    /// [`spawn_daemon`](crate::spawn_daemon) could not start the daemon.
    #[error("starting the mount daemon: {step}")]
    DaemonStart {
        /// The step that failed (`"creating the readiness pipe"`,
        /// `"forking"`, `"signalling readiness"`).
        step: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon reported that mounting failed.
    #[error("mount daemon (pid {pid}) failed: {message}")]
    DaemonFailed {
        /// The daemon's pid.
        pid: u32,
        /// The daemon's error, as it reported it (with its causes).
        message: String,
    },
    /// The daemon exited, or closed its end of the readiness pipe, before
    /// reporting that the mount was ready.
    #[error(
        "mount daemon (pid {pid}) exited before the mount was ready{}",
        status.map_or_else(String::new, |s| format!(" ({s})"))
    )]
    DaemonExited {
        /// The daemon's pid.
        pid: u32,
        /// How it exited, if it had already exited.
        status: Option<std::process::ExitStatus>,
    },
    /// A process hardening step failed ([`make_undumpable`](crate::make_undumpable)).
    #[error("{step}")]
    Hardening {
        /// The step (`"prctl(PR_SET_DUMPABLE, 0)"`).
        step: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What [`Error::Mount`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MountProblem {
    /// The mountpoint is not a directory (or does not exist).
    #[error("not a directory")]
    NotADirectory,
    /// A live lode process already serves this mountpoint.
    #[error("already served by lode (pid {pid})")]
    AlreadyServed {
        /// The serving process.
        pid: u32,
    },
    /// ext4 is in use, so nothing was unmounted.
    #[error("busy (a process uses files or has its cwd there); nothing was unmounted")]
    Busy,
    /// The serving process did not exit after SIGTERM.
    #[error("the lode daemon (pid {pid}) did not exit within {} s", waited.as_secs())]
    DaemonDidNotExit {
        /// The serving process.
        pid: u32,
        /// How long unmount waited.
        waited: std::time::Duration,
    },
    /// A string handed to mount(2) or umount(2) contains a NUL byte.
    #[error("the {what} {value:?} contains a NUL byte")]
    NulByte {
        /// Which argument (`"source"`, `"target"`, `"mount data"`, ...).
        what: &'static str,
        /// Its value.
        value: String,
    },
}

/// Displays an error and its [`source()`](std::error::Error::source)s,
/// `: `-separated: every cause once, as this crate's errors print none of
/// their sources. For log lines (`error = %Chain(&e)`).
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// Walks the chain of `e`: no message may contain the message of the
    /// source it returns (that cause would be printed twice).
    fn assert_each_cause_once(e: &(dyn std::error::Error + 'static)) {
        let mut current = e;
        while let Some(source) = current.source() {
            let (outer, inner) = (current.to_string(), source.to_string());
            assert!(
                !outer.contains(&inner),
                "{outer:?} prints its source {inner:?}"
            );
            current = source;
        }
        let chain = Chain(e).to_string();
        assert_eq!(chain.matches("disk on fire").count(), 1, "{chain}");
    }

    #[test]
    fn no_error_prints_the_source_it_returns() {
        let io = || std::io::Error::other("disk on fire");
        let name = ChunkName::from_bytes([5; 32]);
        let errors = [
            Error::io("reading", "/var/x", io()),
            Error::Chunk {
                index: 1,
                name,
                offset: 4096,
                source: Arc::new(ChunkError::Fetch(SourceError::Tier {
                    tier: "store".into(),
                    source: Box::new(io()),
                })),
            },
            Error::DaemonStart {
                step: "forking",
                source: io(),
            },
            Error::Hardening {
                step: "prctl(PR_SET_DUMPABLE, 0)",
                source: io(),
            },
        ];
        for e in &errors {
            assert_each_cause_once(e);
        }
        #[cfg(feature = "nbd")]
        assert_each_cause_once(&crate::nbd::NbdError::Bind {
            addr: "127.0.0.1:10809".into(),
            source: io(),
        });
        // The context stays in the message.
        assert_eq!(errors[0].to_string(), "reading /var/x");
        assert!(errors[1].source().is_some());
    }

    #[test]
    fn mount_and_daemon_errors_name_their_context() {
        let busy = Error::Mount {
            mountpoint: "/mnt/app".into(),
            problem: MountProblem::Busy,
        };
        assert!(busy.to_string().starts_with("/mnt/app: busy"), "{busy}");
        let stuck = Error::Mount {
            mountpoint: "/mnt/app".into(),
            problem: MountProblem::DaemonDidNotExit {
                pid: 42,
                waited: std::time::Duration::from_secs(30),
            },
        };
        assert_eq!(
            stuck.to_string(),
            "/mnt/app: the lode daemon (pid 42) did not exit within 30 s"
        );
        use std::os::unix::process::ExitStatusExt;
        let exited = Error::DaemonExited {
            pid: 7,
            status: Some(std::process::ExitStatus::from_raw(1 << 8)),
        };
        assert_eq!(
            exited.to_string(),
            "mount daemon (pid 7) exited before the mount was ready (exit status: 1)"
        );
        let failed = Error::DaemonFailed {
            pid: 7,
            message: "/mnt/app: not a directory".into(),
        };
        assert!(
            failed
                .to_string()
                .ends_with("failed: /mnt/app: not a directory")
        );
    }
}
