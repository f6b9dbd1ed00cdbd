//! The tokio NBD server: listener, handshake, transmission.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinSet;

use super::protocol::{
    self as p, Action, ClientOption, ParseError, REQUEST_LEN, SIMPLE_REPLY_LEN, TRANSMISSION_FLAGS,
};
use super::{ListenAddr, NbdError, NbdOptions};
use crate::LazyImage;

/// Options a client may send before it must choose an export.
const MAX_OPTIONS: usize = 256;
/// Chunks one `NBD_CMD_CACHE` fetches at once.
const CACHE_CONCURRENCY: usize = 8;

/// Why a connection ended early.
#[derive(Debug)]
enum ConnError {
    Io(io::Error),
    Protocol(ParseError),
    Violation(String),
    HandshakeTimeout,
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<ParseError> for ConnError {
    fn from(e: ParseError) -> Self {
        Self::Protocol(e)
    }
}

/// The one export a server serves, with its negotiated limits.
#[derive(Debug)]
struct Export {
    image: LazyImage,
    name: String,
    description: String,
    max_payload: u32,
    preferred: u32,
    inflight_bytes: u32,
    handshake_timeout: Duration,
}

impl Export {
    fn new(image: LazyImage, opts: &NbdOptions) -> Result<Self, NbdError> {
        opts.validate()?;
        let max_payload = opts.max_request_bytes;
        // Preferred = the chunk size: a request of one aligned chunk costs
        // one fetch. It must be a power of two of at least 512.
        let cs = image.chunk_size();
        let mut preferred = if cs.is_power_of_two() && cs >= 512 {
            cs
        } else {
            4096
        };
        while preferred > max_payload && preferred > 512 {
            preferred /= 2;
        }
        Ok(Self {
            image,
            name: opts.export_name.clone(),
            description: opts.description.clone(),
            max_payload,
            preferred,
            inflight_bytes: opts.inflight_bytes_per_connection.max(max_payload),
            handshake_timeout: opts.handshake_timeout,
        })
    }

    /// The export answers to its name and to the default name "".
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// A listening NBD server, bound but not yet serving.
///
/// Bind first (to learn the port of `127.0.0.1:0`, or to fail early on a
/// busy address), then [`serve`](Self::serve).
#[derive(Debug)]
pub struct NbdServer {
    listener: Listener,
    addr: ListenAddr,
    _socket_file: Option<SocketFile>,
}

#[derive(Debug)]
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Removes the Unix socket file when the server goes away.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl NbdServer {
    /// Binds the listening socket. A Unix socket file gets mode 0600 (only
    /// its owner may connect: NBD has no authentication) before it appears
    /// at its path. A stale Unix socket file (no process answers on it) is
    /// replaced; a live one is [`NbdError::SocketInUse`].
    pub async fn bind(addr: &ListenAddr) -> Result<Self, NbdError> {
        let bind_err = |source| NbdError::Bind {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(sa) => {
                let l = TcpListener::bind(sa).await.map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                Ok(Self {
                    listener: Listener::Tcp(l),
                    addr: ListenAddr::Tcp(local),
                    _socket_file: None,
                })
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).await?;
                let l = bind_private(path).map_err(bind_err)?;
                Ok(Self {
                    listener: Listener::Unix(l),
                    addr: addr.clone(),
                    _socket_file: Some(SocketFile(path.clone())),
                })
            }
        }
    }

    /// The address actually bound (a TCP port 0 is replaced by the real port).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The NBD URI a client uses to reach `export` on this server
    /// (see [`ListenAddr::uri`]).
    pub fn uri(&self, export: &str) -> String {
        self.addr.uri(export)
    }

    /// Serves `image` as the read-only export `opts.export_name` (and as
    /// the default export `""`) until `shutdown` completes. Then it stops
    /// accepting, lets every connection finish its in-flight requests
    /// (at most [`NbdOptions::shutdown_grace`]), closes them and returns.
    ///
    /// Client errors never end the server; they are logged with `tracing`.
    /// Fails only on invalid options.
    pub async fn serve(
        self,
        image: LazyImage,
        opts: NbdOptions,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NbdError> {
        let export = Arc::new(Export::new(image, &opts)?);
        tracing::info!(
            listen = %self.addr,
            export = %export.name,
            size = export.image.size(),
            uri = %self.addr.uri(&export.name),
            "NBD server listening"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(opts.max_connections));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while conns.try_join_next().is_some() {}
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                a = self.accept() => a,
            };
            let (conn, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: transient.
                    tracing::warn!(listen = %self.addr, error = %e, "NBD accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    %peer,
                    limit = opts.max_connections,
                    "NBD connection limit reached; closing the new connection"
                );
                continue;
            };
            let export = export.clone();
            let stop = stop_rx.clone();
            conns.spawn(async move {
                let _slot = slot;
                match conn {
                    Conn::Tcp(s) => {
                        let _ = s.set_nodelay(true);
                        handle_connection(s, &peer, &export, stop).await;
                    }
                    Conn::Unix(s) => handle_connection(s, &peer, &export, stop).await,
                }
            });
        }
        // Reap connections that ended since the last accept, so the count
        // below is of open connections only.
        while conns.try_join_next().is_some() {}
        tracing::info!(
            listen = %self.addr,
            connections = conns.len(),
            "NBD server shutting down"
        );
        let _ = stop_tx.send(true);
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(opts.shutdown_grace, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                connections = conns.len(),
                "NBD connections still busy after the grace period; aborting them"
            );
            conns.shutdown().await;
        }
        Ok(())
    }

    async fn accept(&self) -> io::Result<(Conn, String)> {
        match &self.listener {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Conn::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Conn::Unix(s), format!("{}", self.addr)))
            }
        }
    }
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Binds a Unix socket at `path` that only its owner can connect to (mode
/// 0600): NBD has no authentication, and the image is served decrypted.
/// The socket is bound under a temporary name in the same directory, made
/// 0600, then renamed into place, so it is never connectable by others,
/// not even for an instant (and the process umask is left alone).
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(l)
}

async fn remove_stale_socket(path: &Path) -> Result<(), NbdError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let bind_err = |source| NbdError::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    };
    if !meta.file_type().is_socket() {
        return Err(bind_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        )));
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(NbdError::SocketInUse {
            path: path.to_owned(),
        }),
        Err(_) => std::fs::remove_file(path).map_err(bind_err),
    }
}

/// Serves one already-connected client (any byte stream: a socket handed
/// over by a supervisor, an in-memory pipe in tests) until it disconnects
/// or `shutdown` completes. Errors of the client are logged, not returned.
pub async fn serve_stream<S>(
    stream: S,
    peer: &str,
    image: LazyImage,
    opts: &NbdOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let export = Arc::new(Export::new(image, opts)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let conn = handle_connection(stream, peer, &export, stop_rx);
    tokio::pin!(conn);
    tokio::select! {
        () = &mut conn => return Ok(()),
        () = shutdown => {}
    }
    let _ = stop_tx.send(true);
    conn.await;
    Ok(())
}

async fn handle_connection<S>(
    stream: S,
    peer: &str,
    export: &Arc<Export>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    tracing::debug!(%peer, "NBD connection opened");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let negotiated = tokio::select! {
        r = tokio::time::timeout(export.handshake_timeout, negotiate(&mut rd, &mut wr, export)) => {
            r.unwrap_or(Err(ConnError::HandshakeTimeout))
        }
        _ = stop.wait_for(|s| *s) => Ok(false),
    };
    let result = match negotiated {
        Ok(true) => transmit(rd, wr, export, peer, stop).await,
        Ok(false) => {
            let _ = wr.shutdown().await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => tracing::debug!(%peer, "NBD connection closed"),
        Err(ConnError::Protocol(e)) => {
            tracing::warn!(%peer, error = %e, "NBD client sent a malformed message; connection closed");
        }
        Err(ConnError::Violation(why)) => {
            tracing::warn!(%peer, error = %why, "NBD client broke the protocol; connection closed");
        }
        Err(ConnError::HandshakeTimeout) => {
            tracing::warn!(%peer, timeout = ?export.handshake_timeout, "NBD handshake timed out; connection closed");
        }
        Err(ConnError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::warn!(%peer, "NBD client closed the connection in the middle of a message");
        }
        Err(ConnError::Io(e)) => {
            tracing::info!(%peer, error = %e, "NBD connection failed");
        }
    }
}

/// Option haggling. `Ok(true)`: enter transmission; `Ok(false)`: the client aborted.
async fn negotiate<R, W>(rd: &mut R, wr: &mut W, ex: &Export) -> Result<bool, ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&p::encode_greeting()).await?;
    wr.flush().await?;
    let mut b4 = [0u8; 4];
    rd.read_exact(&mut b4).await?;
    let flags = p::parse_client_flags(&b4)?;
    for _ in 0..MAX_OPTIONS {
        let mut h = [0u8; p::OPTION_HEADER_LEN];
        rd.read_exact(&mut h).await?;
        let hdr = p::parse_option_header(&h)?;
        let mut data = vec![0u8; hdr.length as usize];
        rd.read_exact(&mut data).await?;
        let opt = match p::parse_option(hdr.option, &data) {
            Ok(o) => o,
            Err(why) if flags.fixed_newstyle => {
                tracing::debug!(option = hdr.option, why, "NBD option invalid");
                let r = p::encode_option_reply(hdr.option, p::REP_ERR_INVALID, why.as_bytes());
                send_option(wr, &r).await?;
                continue;
            }
            Err(why) => return Err(ConnError::Violation(why.into())),
        };
        if !flags.fixed_newstyle && !matches!(opt, ClientOption::ExportName(_)) {
            return Err(ConnError::Violation(format!(
                "option {} from a client that did not agree to fixed newstyle",
                hdr.option
            )));
        }
        let size = ex.image.size();
        match opt {
            ClientOption::ExportName(name) => {
                if !ex.matches(name) {
                    return Err(ConnError::Violation(format!(
                        "NBD_OPT_EXPORT_NAME asked for unknown export {:?}",
                        String::from_utf8_lossy(name)
                    )));
                }
                let r = p::encode_export_name_reply(size, TRANSMISSION_FLAGS, flags.no_zeroes);
                send_option(wr, &r).await?;
                return Ok(true);
            }
            ClientOption::Abort => {
                // The client may already have gone; a failed ACK is fine.
                let _ = send_option(wr, &p::encode_option_reply(hdr.option, p::REP_ACK, &[])).await;
                return Ok(false);
            }
            ClientOption::List => {
                let mut r = p::encode_option_reply(
                    hdr.option,
                    p::REP_SERVER,
                    &p::encode_rep_server(&ex.name, &ex.description),
                );
                r.extend(p::encode_option_reply(hdr.option, p::REP_ACK, &[]));
                send_option(wr, &r).await?;
            }
            ClientOption::Info(req) | ClientOption::Go(req) => {
                let go = hdr.option == p::OPT_GO;
                if !ex.matches(req.name) {
                    let msg = format!(
                        "no export named {:?} (this server has {:?})",
                        String::from_utf8_lossy(req.name),
                        ex.name
                    );
                    tracing::info!(export = %String::from_utf8_lossy(req.name), "NBD client asked for an unknown export");
                    let r = p::encode_option_reply(hdr.option, p::REP_ERR_UNKNOWN, msg.as_bytes());
                    send_option(wr, &r).await?;
                    continue;
                }
                let o = hdr.option;
                let mut r = p::encode_option_reply(
                    o,
                    p::REP_INFO,
                    &p::encode_info_export(size, TRANSMISSION_FLAGS),
                );
                if req.requests.contains(&p::INFO_NAME) {
                    let info = p::encode_info_string(p::INFO_NAME, &ex.name);
                    r.extend(p::encode_option_reply(o, p::REP_INFO, &info));
                }
                if req.requests.contains(&p::INFO_DESCRIPTION) && !ex.description.is_empty() {
                    let info = p::encode_info_string(p::INFO_DESCRIPTION, &ex.description);
                    r.extend(p::encode_option_reply(o, p::REP_INFO, &info));
                }
                // Sent whether asked or not (allowed): min 1 means any alignment works.
                let bs = p::encode_info_block_size(1, ex.preferred, ex.max_payload);
                r.extend(p::encode_option_reply(o, p::REP_INFO, &bs));
                r.extend(p::encode_option_reply(o, p::REP_ACK, &[]));
                send_option(wr, &r).await?;
                if go {
                    return Ok(true);
                }
            }
            ClientOption::Unsupported(code) => {
                let msg = format!("option {code} is not supported by lode");
                let r = p::encode_option_reply(code, p::REP_ERR_UNSUP, msg.as_bytes());
                send_option(wr, &r).await?;
            }
        }
    }
    Err(ConnError::Violation(format!(
        "more than {MAX_OPTIONS} options without choosing an export"
    )))
}

async fn send_option<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

type SharedWriter<W> = Arc<Mutex<W>>;

/// Writes one whole reply; replies of concurrent requests never interleave.
async fn send_reply<W: AsyncWrite + Unpin>(wr: &SharedWriter<W>, bytes: &[u8]) -> io::Result<()> {
    let mut w = wr.lock().await;
    w.write_all(bytes).await?;
    w.flush().await
}

/// Reads a request header. `Ok(false)`: the client closed the connection
/// cleanly between requests.
async fn read_header<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut [u8; REQUEST_LEN],
) -> Result<bool, ConnError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = rd.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(ParseError::Truncated {
                what: "request",
                got: filled,
                need: REQUEST_LEN,
            }
            .into());
        }
        filled += n;
    }
    Ok(true)
}

/// The transmission phase: requests are read in order and served
/// concurrently; replies go out as they complete (maybe out of order).
async fn transmit<R, W>(
    mut rd: R,
    wr: W,
    ex: &Arc<Export>,
    peer: &str,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let wr: SharedWriter<W> = Arc::new(Mutex::new(wr));
    // Bounds the bytes of read replies being built at once (backpressure).
    let budget = Arc::new(Semaphore::new(ex.inflight_bytes as usize));
    let pool = Arc::new(BufferPool::default());
    let mut tasks = JoinSet::new();
    let peer: Arc<str> = peer.into();
    let size = ex.image.size();
    let result: Result<(), ConnError> = loop {
        while let Some(done) = tasks.try_join_next() {
            if let Ok(Err(e)) = done {
                break_on_write_error(&peer, &e);
            }
        }
        let mut hdr = [0u8; REQUEST_LEN];
        let got = tokio::select! {
            r = read_header(&mut rd, &mut hdr) => r,
            _ = stop.wait_for(|s| *s) => break Ok(()),
        };
        match got {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(%peer, "NBD client closed the connection without NBD_CMD_DISC");
                break Ok(());
            }
            Err(e) => break Err(e),
        }
        let req = match p::parse_request(&hdr) {
            Ok(r) => r,
            Err(e) => break Err(e.into()),
        };
        let cookie = req.cookie;
        match p::check_request(&req, size, ex.max_payload) {
            Action::Read { offset, length } => {
                let permit = match budget.clone().acquire_many_owned(length).await {
                    Ok(p) => p,
                    Err(_) => break Ok(()),
                };
                let image = ex.image.clone();
                let wr = wr.clone();
                let peer = peer.clone();
                let pool = pool.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let mut buf = pool.take(SIMPLE_REPLY_LEN + length as usize);
                    let Some((head, body)) = buf.split_first_chunk_mut::<SIMPLE_REPLY_LEN>() else {
                        return Ok(());
                    };
                    let error = match image.read_at(offset, body).await {
                        Ok(n) if n == body.len() => 0,
                        Ok(n) => {
                            tracing::error!(%peer, offset, length, got = n, "NBD read came up short; replying EIO");
                            p::EIO
                        }
                        Err(e) => {
                            tracing::error!(%peer, offset, length, error = %crate::error::Chain(&e), "NBD read failed; replying EIO");
                            p::EIO
                        }
                    };
                    p::write_simple_reply(head, error, cookie);
                    let out = if error == 0 {
                        &buf[..]
                    } else {
                        &buf[..SIMPLE_REPLY_LEN]
                    };
                    let sent = send_reply(&wr, out).await;
                    pool.put(buf);
                    sent
                });
            }
            Action::Cache { offset, length } => {
                let image = ex.image.clone();
                let wr = wr.clone();
                let peer = peer.clone();
                tasks.spawn(async move {
                    let error = cache_range(&image, offset, length, &peer).await;
                    send_reply(&wr, &p::encode_simple_reply(error, cookie)).await
                });
            }
            Action::Reply(error) => {
                if error != 0 {
                    tracing::debug!(%peer, ?req, error, "NBD request refused");
                }
                if let Err(e) = send_reply(&wr, &p::encode_simple_reply(error, cookie)).await {
                    break Err(e.into());
                }
            }
            Action::DiscardThenReply { discard, error } => {
                tracing::debug!(%peer, ?req, error, "NBD write refused (read-only export)");
                let skipped = match tokio::io::copy(
                    &mut (&mut rd).take(u64::from(discard)),
                    &mut tokio::io::sink(),
                )
                .await
                {
                    Ok(n) => n,
                    Err(e) => break Err(e.into()),
                };
                if skipped != u64::from(discard) {
                    break Err(ParseError::Truncated {
                        what: "write payload",
                        got: skipped as usize,
                        need: discard as usize,
                    }
                    .into());
                }
                if let Err(e) = send_reply(&wr, &p::encode_simple_reply(error, cookie)).await {
                    break Err(e.into());
                }
            }
            Action::Disconnect => break Ok(()),
            Action::Close { reply, reason } => {
                if let Some(error) = reply {
                    let _ = send_reply(&wr, &p::encode_simple_reply(error, cookie)).await;
                }
                break Err(ConnError::Violation(format!("{reason}: {req:?}")));
            }
        }
    };
    // Finish what is in flight (the spec asks servers to), then close.
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            break_on_write_error(&peer, &e);
        }
    }
    let _ = wr.lock().await.shutdown().await;
    result
}

/// Reply buffers of one connection, reused so a read does not pay for
/// fresh pages (allocation, page faults, zeroing) every time. Every byte of
/// a reused buffer that is sent was overwritten by the read first: a read
/// fills its whole range or its reply carries only the header.
#[derive(Default)]
struct BufferPool(std::sync::Mutex<Vec<Vec<u8>>>);

/// Buffers a pool keeps, and the largest it keeps (bigger requests, rare
/// with a preferred block size of one chunk, allocate afresh). At most
/// 8 MiB stay allocated per idle connection.
const POOL_BUFFERS: usize = 8;
const POOL_MAX_BUFFER: usize = (1 << 20) + SIMPLE_REPLY_LEN;

impl BufferPool {
    fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.0.lock().ok().and_then(|mut v| v.pop());
        let mut buf = reused.unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    fn put(&self, buf: Vec<u8>) {
        if let Ok(mut v) = self.0.lock()
            && v.len() < POOL_BUFFERS
            && buf.capacity() <= POOL_MAX_BUFFER
        {
            v.push(buf);
        }
    }
}

fn break_on_write_error(peer: &str, e: &io::Error) {
    tracing::debug!(%peer, error = %e, "NBD reply could not be sent");
}

/// `NBD_CMD_CACHE`: fetch the chunks of a range ahead of reads.
async fn cache_range(image: &LazyImage, offset: u64, length: u32, peer: &str) -> u32 {
    if length == 0 {
        return 0;
    }
    let cs = u64::from(image.chunk_size());
    let first = offset / cs;
    let last = (offset + u64::from(length) - 1) / cs;
    match image
        .prefetch((first..=last).collect(), CACHE_CONCURRENCY)
        .await
    {
        Ok(r) if r.failed == 0 => 0,
        Ok(r) => {
            tracing::error!(%peer, offset, length, failed = r.failed, "NBD cache request: chunks failed; replying EIO");
            p::EIO
        }
        Err(e) => {
            tracing::error!(%peer, error = %e, "NBD cache task failed; replying EIO");
            p::EIO
        }
    }
}
