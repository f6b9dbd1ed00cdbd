//! Errors of `lode run`'s setup and teardown.

use std::path::PathBuf;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong before, around or after the container ran. Every one is
/// a setup error: `lode run` exits with [`EXIT_SETUP`] for it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The user is not in the image's `/etc/passwd` (or the group not in
    /// its `/etc/group`).
    #[error("user {user:?} not found in the image: {reason}")]
    User {
        /// The user as asked (`name`, `uid`, `name:group`, `uid:gid`).
        user: String,
        /// What is missing.
        reason: String,
    },
    /// The working directory is not a directory in the image.
    #[error("working directory {path:?} does not exist in the image")]
    Workdir {
        /// The directory, as the container sees it.
        path: String,
    },
    /// No OCI runtime binary.
    #[error("OCI runtime {runtime} not found (install crun or runc, or pass --runtime PATH)")]
    RuntimeMissing {
        /// The binary looked for.
        runtime: PathBuf,
    },
    /// An `-e`/`--env-file` entry is not `KEY=VALUE` or `KEY`.
    #[error("bad environment entry {entry:?}: {reason}")]
    Env {
        /// The entry (only its name, never a value).
        entry: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Nothing to run: no entrypoint, no cmd, no command given.
    #[error("no command: the image has no Entrypoint or Cmd; give one after `--`")]
    NoCommand,
    /// The mountpoint is in use by something that is not a lode mount of
    /// this image.
    #[error("mountpoint {path} is in use (mounted, or not empty) by something other than lode")]
    MountpointInUse {
        /// The mountpoint.
        path: PathBuf,
    },
    /// A container of this name exists already.
    #[error("a container named {name:?} is running already")]
    NameInUse {
        /// The name.
        name: String,
    },
    /// Mounting the image failed.
    #[error("mounting image {image} at {path}: {reason}")]
    Mount {
        /// The image.
        image: String,
        /// Where.
        path: PathBuf,
        /// What the mounter said.
        reason: String,
    },
    /// A system call or file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The OCI runtime failed to start.
    #[error("starting the OCI runtime {runtime}")]
    RuntimeStart {
        /// The runtime binary.
        runtime: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating the OCI runtime config.
    #[error("building the OCI runtime config")]
    Spec {
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

/// The exit code for a setup error, as podman and docker use it.
pub const EXIT_SETUP: i32 = 125;
