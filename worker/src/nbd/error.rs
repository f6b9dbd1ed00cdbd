//! Errors of the NBD server.

use std::path::PathBuf;

/// Why the NBD server could not start or keep listening.
///
/// Errors of one client connection (protocol violations, a chunk that
/// cannot be read) never end the server: they are answered on the wire or
/// end that connection, with a log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// The listen address could not be parsed.
    #[error("invalid listen address {input:?}: {reason}")]
    InvalidListenAddr {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The options are inconsistent (export name, sizes).
    #[error("invalid NBD options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
    /// Binding the listening socket failed (the OS error is the
    /// [`source()`](std::error::Error::source)).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A Unix socket path is already served by a live process.
    #[error("unix socket {} is in use by a running server", path.display())]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
}
