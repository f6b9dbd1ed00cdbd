//! An NBD server over a [`LazyImage`]: the image as a read-only network
//! block device for VMs (qemu), `nbd-client`, `nbdcopy`, `qemu-img`.
//!
//! Speaks the fixed newstyle handshake (`NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_LIST`, `NBD_OPT_ABORT`, old-style `NBD_OPT_EXPORT_NAME`; other
//! options get `NBD_REP_ERR_UNSUP`, structured replies and TLS included)
//! and simple replies in transmission. One named export, also reachable as
//! the default export `""`, with the flags
//! `HAS_FLAGS | READ_ONLY | SEND_FLUSH | CAN_MULTI_CONN | SEND_CACHE`, and
//! block sizes minimum 1, preferred = the image's chunk size (one aligned
//! request = one chunk fetch), maximum [`NbdOptions::max_request_bytes`].
//!
//! | command | answer |
//! |---|---|
//! | `READ` inside the export | the bytes, fetched lazily; a chunk that cannot be served (missing, wrong key, corrupt) gives `EIO` and an error log line naming it |
//! | `READ` past the end, or longer than the maximum | `EINVAL` |
//! | `WRITE` | payload consumed, `EPERM` (longer than the maximum: connection closed) |
//! | `TRIM`, `WRITE_ZEROES`, `RESIZE` | `EPERM` |
//! | `FLUSH` | success |
//! | `CACHE` | fetches the range's chunks ahead of reads |
//! | `BLOCK_STATUS`, unknown flags | `EINVAL` |
//! | `DISC` | in-flight requests finish, then the connection closes |
//! | unknown command | `EINVAL`, then the connection closes |
//!
//! Many connections are served at once, and the requests of one connection
//! are served concurrently (replies may leave out of order, each written
//! whole). A malformed client message (bad magic, unknown client flags, an
//! absurd length, a truncated message) ends that connection with a `warn`
//! log line; the server and its other connections carry on. The parsers in
//! [`protocol`] are pure functions over bytes (fuzzed by `nbd_parse`).
//!
//! # Example
//!
//! ```
//! use worker::nbd::{ListenAddr, NbdOptions, NbdServer};
//! use worker::{ChunkTable, LazyImage, LazyImageOptions, MemorySource, TierId};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A 1 MiB image of holes (real images come from an opened manifest).
//! let table = ChunkTable { image_size: 1 << 20, chunk_size: 512 << 10, chunks: vec![None, None] };
//! let source = Arc::new(MemorySource::new(TierId::untrusted("store")));
//! let image = LazyImage::new(table, source, LazyImageOptions::default())?;
//!
//! // Port 0: any free port. NBD has no authentication: prefer "unix:/path"
//! // (the socket file gets mode 0600); `lode serve-nbd` does by default.
//! let listen: ListenAddr = "127.0.0.1:0".parse()?;
//! let server = NbdServer::bind(&listen).await?;
//! let ListenAddr::Tcp(addr) = server.local_addr().clone() else { unreachable!() };
//! println!("try: nbdinfo {}", server.uri("app")); // nbd://127.0.0.1:PORT/app
//!
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let task = tokio::spawn(server.serve(image, NbdOptions::new("app"), async {
//!     let _ = stopped.await;
//! }));
//!
//! // A client connects and gets the fixed-newstyle greeting.
//! use tokio::io::AsyncReadExt;
//! let mut client = tokio::net::TcpStream::connect(addr).await?;
//! let mut greeting = [0u8; 18];
//! client.read_exact(&mut greeting).await?;
//! assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
//!
//! stop.send(()).ok();
//! task.await??;
//! # Ok(())
//! # }
//! ```
//!
//! [`serve`] binds and serves in one call; [`serve_stream`] serves one
//! already-connected stream.

mod error;
pub mod protocol;
mod server;

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use error::NbdError;
pub use server::{NbdServer, serve_stream};

/// Where `lode serve-nbd NAME` listens by default: `STATE_DIR/nbd/NAME.sock`,
/// with characters other than ASCII letters, digits, `.`, `-` and `_`
/// replaced by `_` (image names may hold `/` and `:`).
pub fn default_socket_path(state_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join("nbd").join(format!("{stem}.sock"))
}

use crate::LazyImage;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
///
/// Parsed from `unix:/path/to.sock`, `IP:PORT`, `[IPv6]:PORT`, a bare IP
/// (port 10809), `localhost[:PORT]` or `:PORT` (both on 127.0.0.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Default for ListenAddr {
    /// `127.0.0.1:10809` (what a bare `localhost` means): loopback, but any
    /// local user can connect. `lode serve-nbd` listens on a Unix socket of
    /// mode 0600 unless told otherwise.
    fn default() -> Self {
        Self::Tcp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), DEFAULT_PORT))
    }
}

impl ListenAddr {
    /// The NBD URI (as understood by libnbd's `nbdinfo`/`nbdcopy` and qemu)
    /// of `export` at this address: `nbd://127.0.0.1:10809/NAME` or
    /// `nbd+unix:///NAME?socket=/path`. A wildcard IP becomes loopback.
    pub fn uri(&self, export: &str) -> String {
        let name = percent_encode(export);
        match self {
            Self::Tcp(sa) => {
                let ip = match sa.ip() {
                    IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(ip) if ip.is_unspecified() => {
                        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
                    }
                    ip => ip,
                };
                format!("nbd://{}/{name}", SocketAddr::new(ip, sa.port()))
            }
            Self::Unix(path) => format!(
                "nbd+unix:///{name}?socket={}",
                percent_encode(&path.to_string_lossy())
            ),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(sa) => write!(f, "{sa}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = NbdError;

    fn from_str(s: &str) -> Result<Self, NbdError> {
        let bad = |reason: &str| NbdError::InvalidListenAddr {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self::Tcp(sa));
        }
        if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(Self::Tcp(SocketAddr::new(ip, DEFAULT_PORT)));
        }
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| bad("port is not a number from 0 to 65535"))
        };
        let local = |port| Ok(Self::Tcp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)));
        match s {
            "localhost" => local(DEFAULT_PORT),
            _ => {
                if let Some(p) = s.strip_prefix("localhost:").or_else(|| s.strip_prefix(':')) {
                    local(port(p)?)
                } else {
                    Err(bad(
                        "expected unix:/path, IP:PORT, [IPv6]:PORT, IP, localhost[:PORT] or :PORT",
                    ))
                }
            }
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/@+".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Settings of the NBD server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NbdOptions {
    /// Name of the export (clients may also ask for `""`). At most 4096
    /// bytes, no NUL. Default `"lode"`.
    pub export_name: String,
    /// Description sent with `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    pub description: String,
    /// Largest read a client may request (advertised as the maximum block
    /// size; also the largest write payload consumed before refusing).
    /// Default 32 MiB.
    pub max_request_bytes: u32,
    /// Bytes of read replies one connection may have in flight before the
    /// server stops reading its requests (backpressure). Default 128 MiB;
    /// never below `max_request_bytes`.
    pub inflight_bytes_per_connection: u32,
    /// Connections served at once; more are closed on accept. Default 128.
    pub max_connections: usize,
    /// Time a client has to finish option haggling. Default 30 s.
    pub handshake_timeout: Duration,
    /// On shutdown, how long connections may take to finish in-flight
    /// requests before they are cut. Default 10 s.
    pub shutdown_grace: Duration,
}

impl Default for NbdOptions {
    fn default() -> Self {
        Self::new("lode")
    }
}

impl NbdOptions {
    /// Defaults with the given export name.
    pub fn new(export_name: impl Into<String>) -> Self {
        Self {
            export_name: export_name.into(),
            description: String::new(),
            max_request_bytes: 32 << 20,
            inflight_bytes_per_connection: 128 << 20,
            max_connections: 128,
            handshake_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Sets [`description`](Self::description).
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets [`max_request_bytes`](Self::max_request_bytes).
    #[must_use]
    pub fn max_request_bytes(mut self, bytes: u32) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// Sets [`inflight_bytes_per_connection`](Self::inflight_bytes_per_connection).
    #[must_use]
    pub fn inflight_bytes_per_connection(mut self, bytes: u32) -> Self {
        self.inflight_bytes_per_connection = bytes;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets [`handshake_timeout`](Self::handshake_timeout).
    #[must_use]
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    #[must_use]
    pub fn shutdown_grace(mut self, t: Duration) -> Self {
        self.shutdown_grace = t;
        self
    }

    /// Checks names and limits against the protocol.
    pub fn validate(&self) -> Result<(), NbdError> {
        let bad = |reason: String| Err(NbdError::InvalidOptions { reason });
        for (what, s) in [
            ("export name", &self.export_name),
            ("description", &self.description),
        ] {
            if s.len() > protocol::MAX_STRING_LEN {
                return bad(format!(
                    "{what} is {} bytes (NBD allows {})",
                    s.len(),
                    protocol::MAX_STRING_LEN
                ));
            }
            if s.contains('\0') {
                return bad(format!("{what} contains a NUL byte"));
            }
        }
        if self.max_request_bytes < 512 {
            return bad(format!(
                "max_request_bytes {} is below 512",
                self.max_request_bytes
            ));
        }
        if self.max_connections == 0 {
            return bad("max_connections is 0".into());
        }
        Ok(())
    }
}

/// Binds `listen` and serves `image` until `shutdown` completes
/// ([`NbdServer::bind`] + [`NbdServer::serve`]).
pub async fn serve(
    image: LazyImage,
    listen: &ListenAddr,
    opts: NbdOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NbdError> {
    NbdServer::bind(listen)
        .await?
        .serve(image, opts, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn socket_names_stay_in_their_directory() {
        let at = |n| super::default_socket_path(std::path::Path::new("/s"), n);
        assert_eq!(
            at("python-app:latest"),
            std::path::Path::new("/s/nbd/python-app_latest.sock")
        );
        assert_eq!(at("../etc/x"), std::path::Path::new("/s/nbd/.._etc_x.sock"));
        assert_eq!(at("a.b_c-d"), std::path::Path::new("/s/nbd/a.b_c-d.sock"));
    }

    use super::*;

    #[test]
    fn listen_addr_parsing() {
        let p = |s: &str| s.parse::<ListenAddr>();
        assert_eq!(p("127.0.0.1:10809").unwrap(), ListenAddr::default());
        assert_eq!(p("localhost").unwrap(), ListenAddr::default());
        assert_eq!(p("127.0.0.1").unwrap(), ListenAddr::default());
        assert_eq!(
            p(":4000").unwrap(),
            ListenAddr::Tcp("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            p("[::1]:5").unwrap(),
            ListenAddr::Tcp("[::1]:5".parse().unwrap())
        );
        assert_eq!(
            p("::1").unwrap(),
            ListenAddr::Tcp("[::1]:10809".parse().unwrap())
        );
        assert_eq!(
            p("unix:/run/x.sock").unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        for bad in ["unix:", "example.com:1", "localhost:99999", "", ":x"] {
            assert!(p(bad).is_err(), "{bad:?} parsed");
        }
        let shown = ListenAddr::Unix("/a b".into()).to_string();
        assert_eq!(shown, "unix:/a b");
    }

    #[test]
    fn uris() {
        assert_eq!(
            ListenAddr::default().uri("python-app:latest"),
            "nbd://127.0.0.1:10809/python-app:latest"
        );
        assert_eq!(
            ListenAddr::Tcp("0.0.0.0:1".parse().unwrap()).uri("a b"),
            "nbd://127.0.0.1:1/a%20b"
        );
        assert_eq!(
            ListenAddr::Unix("/tmp/s.sock".into()).uri(""),
            "nbd+unix:///?socket=/tmp/s.sock"
        );
    }

    #[test]
    fn options_validation() {
        assert!(NbdOptions::default().validate().is_ok());
        assert!(NbdOptions::new("a\0b").validate().is_err());
        assert!(NbdOptions::new("x".repeat(5000)).validate().is_err());
        assert!(
            NbdOptions::new("a")
                .max_request_bytes(100)
                .validate()
                .is_err()
        );
        assert!(NbdOptions::new("a").max_connections(0).validate().is_err());
    }
}
