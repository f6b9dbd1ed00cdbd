//! The NBD server against a raw protocol client (exact error codes,
//! malformed messages) and against real clients: `nbdinfo`, `nbdcopy`
//! (libnbd) and `qemu-img` over TCP and a Unix socket.
//!
//! Real-client tests skip when the tools are missing unless
//! `LODE_REQUIRE_SERVERS=1` (apt: libnbd-bin qemu-utils).

mod common;

use common::{CHUNK, sealed_source, skip};

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chunk_core::{ChunkName, Salt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use worker::nbd::protocol as p;
use worker::nbd::{ListenAddr, NbdError, NbdOptions, NbdServer};
use worker::{Fault, LazyImage, LazyImageOptions, MemorySource, TierId};

const NAME: &str = "test-image";

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// 5 chunks and a short last one: random, hole, random, half zero,
/// hole, 12 KiB random. 2.6 MiB + 12 KiB (a multiple of 512 for qemu).
fn test_bytes() -> Vec<u8> {
    let cs = CHUNK as usize;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut data = vec![0u8; 5 * cs + 12 * 1024];
    let mut fill = |r: std::ops::Range<usize>| r.for_each(|i| data[i] = rng.u8(..));
    fill(0..cs);
    fill(2 * cs..3 * cs);
    fill(3 * cs + cs / 2..4 * cs);
    fill(5 * cs..5 * cs + 12 * 1024);
    data
}

/// Collects every `tracing` event of this test binary as one line of text,
/// so tests can check that the server logged what it should.
mod logs {
    use std::fmt::Write as _;
    use std::sync::{Mutex, OnceLock};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static INSTALLED: OnceLock<()> = OnceLock::new();

    struct Capture;
    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            let _ = write!(self.0, " {}={}", field.name(), value);
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut line = Line(event.metadata().level().to_string());
            event.record(&mut line);
            LINES.lock().unwrap().push(line.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    pub(crate) fn install() {
        INSTALLED.get_or_init(|| {
            tracing::subscriber::set_global_default(Capture).expect("install log capture");
        });
    }

    /// Lines containing every one of `needles`, waiting up to 5 s for one
    /// (the server may log just after the client saw the socket close).
    pub(crate) fn matching(needles: &[&str]) -> Vec<String> {
        for _ in 0..100 {
            let hits: Vec<String> = LINES
                .lock()
                .unwrap()
                .iter()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .cloned()
                .collect();
            if !hits.is_empty() {
                return hits;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Vec::new()
    }
}

struct Fixture {
    data: Vec<u8>,
    image: LazyImage,
    source: Arc<MemorySource>,
    names: Vec<Option<ChunkName>>,
}

fn fixture() -> Fixture {
    logs::install();
    let data = test_bytes();
    let (table, source) = sealed_source(&data);
    let names: Vec<Option<ChunkName>> = table
        .chunks
        .iter()
        .map(|c| c.as_ref().map(|r| r.name))
        .collect();
    assert_eq!(names.iter().filter(|n| n.is_none()).count(), 2, "holes");
    // No plaintext cache: every read goes to the source, so faults show.
    let opts = LazyImageOptions::default()
        .plaintext_cache_bytes(0)
        .readahead_chunks(0);
    let image = LazyImage::new(table, source.clone(), opts).unwrap();
    Fixture {
        data,
        image,
        source,
        names,
    }
}

struct Running {
    addr: ListenAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NbdError>>,
}

impl Running {
    async fn start(image: LazyImage, listen: &str, opts: NbdOptions) -> Self {
        let server = NbdServer::bind(&listen.parse().unwrap()).await.unwrap();
        let addr = server.local_addr().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(image, opts, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn tcp(&self) -> std::net::SocketAddr {
        match &self.addr {
            ListenAddr::Tcp(sa) => *sa,
            ListenAddr::Unix(_) => panic!("not TCP"),
        }
    }

    fn uri(&self) -> String {
        self.addr.uri(NAME)
    }

    async fn stop(mut self) {
        assert!(!self.task.is_finished(), "server ended on its own");
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// A minimal NBD client speaking the raw protocol.
struct Client<S> {
    s: S,
    pending: HashMap<u64, u32>,
}

struct OptReply {
    option: u32,
    kind: u32,
    data: Vec<u8>,
}

struct Info {
    size: u64,
    flags: u16,
    block: Option<(u32, u32, u32)>,
    name: Option<String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads the greeting and sends client flags.
    async fn hello(mut s: S, client_flags: u32) -> Self {
        let mut g = [0u8; 18];
        s.read_exact(&mut g).await.unwrap();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(
            u16::from_be_bytes([g[16], g[17]]),
            3,
            "FIXED_NEWSTYLE|NO_ZEROES"
        );
        s.write_all(&client_flags.to_be_bytes()).await.unwrap();
        Self {
            s,
            pending: HashMap::new(),
        }
    }

    async fn send_opt(&mut self, option: u32, data: &[u8]) {
        let mut b = p::IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).await.unwrap();
    }

    async fn opt_reply(&mut self) -> OptReply {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).await.unwrap();
        assert_eq!(&h[..8], &p::OPTION_REPLY_MAGIC.to_be_bytes());
        let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).await.unwrap();
        OptReply { option, kind, data }
    }

    /// Sends INFO or GO; returns the information or the error reply type.
    async fn info_or_go(&mut self, option: u32, name: &str) -> Result<Info, u32> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&p::INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&p::INFO_NAME.to_be_bytes());
        self.send_opt(option, &d).await;
        let mut info = Info {
            size: 0,
            flags: 0,
            block: None,
            name: None,
        };
        let mut got_export = false;
        loop {
            let r = self.opt_reply().await;
            assert_eq!(r.option, option);
            match r.kind {
                p::REP_ACK => break,
                p::REP_INFO => match u16::from_be_bytes([r.data[0], r.data[1]]) {
                    p::INFO_EXPORT => {
                        assert_eq!(r.data.len(), 12);
                        info.size = u64::from_be_bytes(r.data[2..10].try_into().unwrap());
                        info.flags = u16::from_be_bytes([r.data[10], r.data[11]]);
                        got_export = true;
                    }
                    p::INFO_BLOCK_SIZE => {
                        let v = |i: usize| u32::from_be_bytes(r.data[i..i + 4].try_into().unwrap());
                        info.block = Some((v(2), v(6), v(10)));
                    }
                    p::INFO_NAME => {
                        info.name = Some(String::from_utf8(r.data[2..].to_vec()).unwrap())
                    }
                    other => panic!("unexpected info {other}"),
                },
                err if err & (1 << 31) != 0 => return Err(err),
                other => panic!("unexpected reply type {other}"),
            }
        }
        assert!(got_export, "NBD_INFO_EXPORT missing");
        Ok(info)
    }

    async fn request(
        &mut self,
        cmd: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut b = p::REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).await.unwrap();
        // Only a successful read carries data.
        self.pending.insert(cookie, if cmd == 0 { len } else { 0 });
    }

    /// Reads one reply: (cookie, error, data).
    async fn reply(&mut self) -> (u64, u32, Vec<u8>) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).await.unwrap();
        assert_eq!(&h[..4], &p::SIMPLE_REPLY_MAGIC.to_be_bytes());
        let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let len = self
            .pending
            .remove(&cookie)
            .expect("reply to a pending cookie");
        let mut data = vec![0u8; if error == 0 { len as usize } else { 0 }];
        self.s.read_exact(&mut data).await.unwrap();
        (cookie, error, data)
    }

    async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(0, 0, 1, offset, len, &[]).await;
        let (cookie, error, data) = self.reply().await;
        assert_eq!(cookie, 1);
        if error == 0 { Ok(data) } else { Err(error) }
    }

    /// The server closed the connection (EOF, or reset).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

async fn tcp_go(addr: std::net::SocketAddr, name: &str) -> (Client<TcpStream>, Info) {
    let mut c = Client::hello(TcpStream::connect(addr).await.unwrap(), 3).await;
    let info = c.info_or_go(p::OPT_GO, name).await.unwrap();
    (c, info)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_options() {
    let f = fixture();
    let srv = Running::start(
        f.image.clone(),
        "127.0.0.1:0",
        NbdOptions::new(NAME).description("a test"),
    )
    .await;
    let mut c = Client::hello(TcpStream::connect(srv.tcp()).await.unwrap(), 3).await;

    // LIST: our one export, then ACK.
    c.send_opt(p::OPT_LIST, &[]).await;
    let r = c.opt_reply().await;
    assert_eq!(r.kind, p::REP_SERVER);
    let n = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize;
    assert_eq!(&r.data[4..4 + n], NAME.as_bytes());
    assert_eq!(&r.data[4 + n..], b"a test");
    assert_eq!(c.opt_reply().await.kind, p::REP_ACK);
    // LIST with data is invalid, the session goes on.
    c.send_opt(p::OPT_LIST, b"x").await;
    assert_eq!(c.opt_reply().await.kind, p::REP_ERR_INVALID);

    // Structured replies, STARTTLS and unknown options: unsupported.
    for opt in [p::OPT_STRUCTURED_REPLY, p::OPT_STARTTLS, 10, 12345] {
        c.send_opt(opt, &[]).await;
        let r = c.opt_reply().await;
        assert_eq!((r.option, r.kind), (opt, p::REP_ERR_UNSUP));
    }
    // Malformed GO payload: invalid.
    c.send_opt(p::OPT_GO, &[0, 0, 0, 9, b'x']).await;
    assert_eq!(c.opt_reply().await.kind, p::REP_ERR_INVALID);

    // Unknown export: NBD_REP_ERR_UNKNOWN.
    assert_eq!(
        c.info_or_go(p::OPT_INFO, "nope").await.err(),
        Some(p::REP_ERR_UNKNOWN)
    );
    // INFO on the named and on the default export.
    for name in [NAME, ""] {
        let info = c.info_or_go(p::OPT_INFO, name).await.unwrap();
        assert_eq!(info.size, f.data.len() as u64);
        let want =
            p::TFLAG_HAS_FLAGS | p::TFLAG_READ_ONLY | p::TFLAG_SEND_FLUSH | p::TFLAG_CAN_MULTI_CONN;
        assert_eq!(info.flags & want, want, "flags {:#x}", info.flags);
        assert_eq!(
            info.flags & (p::TFLAG_SEND_TRIM | p::TFLAG_SEND_WRITE_ZEROES | p::TFLAG_SEND_FUA),
            0
        );
        assert_eq!(info.block, Some((1, CHUNK, 32 << 20)));
        assert_eq!(info.name.as_deref(), Some(NAME));
    }
    // GO enters transmission.
    let info = c.info_or_go(p::OPT_GO, NAME).await.unwrap();
    assert_eq!(info.size, f.data.len() as u64);
    assert_eq!(c.read(0, 4096).await.unwrap(), &f.data[..4096]);
    c.request(2, 0, 9, 0, 0, &[]).await;
    assert!(c.closed().await, "DISC closes the connection");

    // ABORT: ACK, then closed.
    let mut c = Client::hello(TcpStream::connect(srv.tcp()).await.unwrap(), 3).await;
    c.send_opt(p::OPT_ABORT, &[]).await;
    assert_eq!(c.opt_reply().await.kind, p::REP_ACK);
    assert!(c.closed().await);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_style_export_name() {
    let f = fixture();
    let srv = Running::start(f.image.clone(), "127.0.0.1:0", NbdOptions::new(NAME)).await;
    for (flags, tail) in [(3u32, 0usize), (1, 124)] {
        let mut c = Client::hello(TcpStream::connect(srv.tcp()).await.unwrap(), flags).await;
        c.send_opt(p::OPT_EXPORT_NAME, NAME.as_bytes()).await;
        let mut b = vec![0u8; 10 + tail];
        c.s.read_exact(&mut b).await.unwrap();
        assert_eq!(
            u64::from_be_bytes(b[..8].try_into().unwrap()),
            f.data.len() as u64
        );
        assert!(b[10..].iter().all(|&x| x == 0));
        let off = 2 * CHUNK as u64 + 100;
        assert_eq!(
            c.read(off, 1000).await.unwrap(),
            &f.data[off as usize..off as usize + 1000]
        );
    }
    // An unknown name cannot be answered with an error: the server closes.
    let mut c = Client::hello(TcpStream::connect(srv.tcp()).await.unwrap(), 3).await;
    c.send_opt(p::OPT_EXPORT_NAME, b"other").await;
    assert!(c.closed().await);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_writes_and_errors() {
    let f = fixture();
    let size = f.data.len() as u64;
    let srv = Running::start(
        f.image.clone(),
        "127.0.0.1:0",
        NbdOptions::new(NAME).max_request_bytes(1 << 20),
    )
    .await;
    let (mut c, info) = tcp_go(srv.tcp(), NAME).await;
    assert_eq!(info.block, Some((1, CHUNK, 1 << 20)));

    // Pipelined reads of the whole image in odd-sized pieces.
    let piece = 300_001u64;
    let mut cookie = 100;
    let mut want = HashMap::new();
    let mut off = 0;
    while off < size {
        let len = piece.min(size - off) as u32;
        c.request(0, 0, cookie, off, len, &[]).await;
        want.insert(cookie, off);
        cookie += 1;
        off += u64::from(len);
    }
    while !want.is_empty() {
        let (ck, err, data) = c.reply().await;
        assert_eq!(err, 0);
        let off = want.remove(&ck).unwrap() as usize;
        assert!(data == f.data[off..off + data.len()], "bytes at {off}");
    }

    // Up to the end: fine. Past it: EINVAL. Longer than the maximum: EINVAL.
    assert_eq!(
        c.read(size - 10, 10).await.unwrap(),
        &f.data[size as usize - 10..]
    );
    assert_eq!(c.read(size - 10, 11).await, Err(p::EINVAL));
    assert_eq!(c.read(size, 1).await, Err(p::EINVAL));
    assert_eq!(c.read(u64::MAX - 1, 4).await, Err(p::EINVAL));
    assert_eq!(c.read(0, (1 << 20) + 1).await, Err(p::EINVAL));
    // Unknown flag bits: EINVAL.
    c.request(0, 1 << 9, 5, 0, 10, &[]).await;
    assert_eq!(c.reply().await.1, p::EINVAL);

    // WRITE: EPERM, and the payload was consumed (the next read is in sync).
    let payload = vec![0xAB; 70_000];
    c.request(1, 0, 6, 0, payload.len() as u32, &payload).await;
    assert_eq!(c.reply().await.1, p::EPERM);
    c.request(1, p::CMD_FLAG_FUA, 7, size + 100, 4, b"abcd")
        .await;
    assert_eq!(c.reply().await.1, p::EPERM);
    // TRIM, WRITE_ZEROES: EPERM. FLUSH: success. CACHE: success.
    for (cmd, want) in [(4u16, p::EPERM), (6, p::EPERM), (3, 0), (5, 0)] {
        c.request(cmd, 0, 8, 0, 4096, &[]).await;
        assert_eq!(c.reply().await, (8, want, vec![]), "command {cmd}");
    }
    assert_eq!(c.read(0, 4096).await.unwrap(), &f.data[..4096]);
    // Holes read as zeros.
    assert!(
        c.read(u64::from(CHUNK), CHUNK)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
    assert!(f.image.stats().holes_served >= 1);

    // DISC with reads in flight: they are answered, then the socket closes.
    c.request(0, 0, 20, 0, 1 << 20, &[]).await;
    c.request(0, 0, 21, 1 << 20, 1 << 20, &[]).await;
    c.request(2, 0, 22, 0, 0, &[]).await;
    c.pending.remove(&22);
    let mut got = vec![c.reply().await.0, c.reply().await.0];
    got.sort();
    assert_eq!(got, [20, 21]);
    assert!(c.closed().await);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_chunks_give_eio_and_serving_goes_on() {
    let f = fixture();
    let srv = Running::start(f.image.clone(), "127.0.0.1:0", NbdOptions::new(NAME)).await;
    let (mut c, _) = tcp_go(srv.tcp(), NAME).await;
    let c0 = f.names[0].unwrap();
    let c2 = f.names[2].unwrap();
    f.source.remove(&c0);
    f.source.set_fault(c2, Some(Fault::Corrupt));
    assert_eq!(c.read(10, 100).await, Err(p::EIO), "missing chunk");
    assert_eq!(
        c.read(2 * u64::from(CHUNK), 100).await,
        Err(p::EIO),
        "corrupt chunk"
    );
    // A read spanning a good and a bad chunk fails whole.
    assert_eq!(c.read(3 * u64::from(CHUNK) - 10, 20).await, Err(p::EIO));
    // The same connection still serves good chunks.
    let off = 3 * CHUNK as usize + CHUNK as usize / 2;
    assert_eq!(
        c.read(off as u64, 5000).await.unwrap(),
        &f.data[off..off + 5000]
    );
    f.source.set_fault(c2, None);
    assert_eq!(
        c.read(2 * u64::from(CHUNK), 100).await.unwrap(),
        &f.data[2 * CHUNK as usize..2 * CHUNK as usize + 100]
    );
    assert!(f.image.stats().read_errors >= 3);
    // The server logged each failure, naming the chunk.
    for name in [c0, c2] {
        let hits = logs::matching(&["ERROR", "replying EIO", &name.to_string()]);
        assert!(!hits.is_empty(), "no EIO log line naming chunk {name}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_close_only_their_connection() {
    let f = fixture();
    let srv = Running::start(
        f.image.clone(),
        "127.0.0.1:0",
        NbdOptions::new(NAME).handshake_timeout(Duration::from_secs(2)),
    )
    .await;
    let (mut good, _) = tcp_go(srv.tcp(), NAME).await;
    assert!(good.read(0, 100).await.is_ok());

    // Bad request magic.
    let (mut c, _) = tcp_go(srv.tcp(), NAME).await;
    c.s.write_all(&[0xde; 28]).await.unwrap();
    assert!(c.closed().await, "bad request magic");
    // Unknown command: EINVAL, then closed.
    let (mut c, _) = tcp_go(srv.tcp(), NAME).await;
    c.request(77, 0, 3, 0, 0, &[]).await;
    assert_eq!(c.reply().await.1, p::EINVAL);
    assert!(c.closed().await, "unknown command");
    // A write announcing an absurd payload.
    let (mut c, _) = tcp_go(srv.tcp(), NAME).await;
    c.request(1, 0, 3, 0, u32::MAX, &[]).await;
    assert!(c.closed().await, "absurd write length");
    // A truncated request, then EOF.
    let (mut c, _) = tcp_go(srv.tcp(), NAME).await;
    c.s.write_all(&p::REQUEST_MAGIC.to_be_bytes())
        .await
        .unwrap();
    c.s.shutdown().await.unwrap();
    assert!(c.closed().await, "truncated request");
    // A write whose payload never fully arrives.
    let (mut c, _) = tcp_go(srv.tcp(), NAME).await;
    let mut b = p::REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0, 1]);
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(&1000u32.to_be_bytes());
    b.extend_from_slice(&[1; 10]);
    c.s.write_all(&b).await.unwrap();
    c.s.shutdown().await.unwrap();
    assert!(c.closed().await, "truncated write payload");

    // Handshake: unknown client flags; bad option magic; absurd option length;
    // garbage instead of anything; silence (handshake timeout).
    let mut c = Client::hello(TcpStream::connect(srv.tcp()).await.unwrap(), 0x80).await;
    assert!(c.closed().await, "unknown client flags");
    let mut c = Client::hello(TcpStream::connect(srv.tcp()).await.unwrap(), 3).await;
    c.s.write_all(b"GARBAGE!GARBAGE!").await.unwrap();
    assert!(c.closed().await, "bad option magic");
    let mut c = Client::hello(TcpStream::connect(srv.tcp()).await.unwrap(), 3).await;
    let mut h = p::IHAVEOPT.to_be_bytes().to_vec();
    h.extend_from_slice(&p::OPT_GO.to_be_bytes());
    h.extend_from_slice(&u32::MAX.to_be_bytes());
    c.s.write_all(&h).await.unwrap();
    assert!(c.closed().await, "absurd option length");
    let mut raw = TcpStream::connect(srv.tcp()).await.unwrap();
    raw.write_all(&[0xff; 3]).await.unwrap();
    raw.shutdown().await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut sink))
        .await
        .unwrap();
    let mut c = Client::hello(TcpStream::connect(srv.tcp()).await.unwrap(), 3).await;
    assert!(c.closed().await, "handshake timeout");

    // Each bad connection left a log line saying why.
    for why in [
        "bad request magic",
        "unknown command",
        "write payload longer",
        "truncated request",
        "truncated write payload",
        "unknown client flags",
        "bad option magic",
        "announces 4294967295 bytes",
        "handshake timed out",
    ] {
        assert!(
            !logs::matching(&["WARN", why]).is_empty(),
            "no warn log line with {why:?}"
        );
    }

    // The first connection and new ones still work.
    assert_eq!(
        good.read(5 * u64::from(CHUNK), 100).await.unwrap(),
        &f.data[5 * CHUNK as usize..][..100]
    );
    let (mut c, _) = tcp_go(srv.tcp(), "").await;
    assert!(c.read(0, 100).await.is_ok());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_raw_and_stale_socket() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    // A stale socket file from a dead server is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let listen = format!("unix:{}", sock.display());
    let srv = Running::start(f.image.clone(), &listen, NbdOptions::new(NAME)).await;
    // Only the owner may connect: NBD has no authentication.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // A second server on a live socket is refused.
    assert!(matches!(
        NbdServer::bind(&listen.parse().unwrap()).await,
        Err(NbdError::SocketInUse { .. })
    ));
    let mut c = Client::hello(UnixStream::connect(&sock).await.unwrap(), 3).await;
    c.info_or_go(p::OPT_GO, NAME).await.unwrap();
    assert_eq!(c.read(100, 100).await.unwrap(), &f.data[100..200]);
    srv.stop().await;
    assert!(!sock.exists(), "socket file removed on shutdown");
}

/// Runs a command, returns stdout; panics with stderr on failure.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn blocking(mut cmd: Command) -> String {
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap()
}

fn clients_missing() -> bool {
    for tool in ["nbdinfo", "nbdcopy", "qemu-img"] {
        if !have(tool) {
            return skip(&format!(
                "{tool} missing (apt-get install libnbd-bin qemu-utils)"
            ));
        }
    }
    false
}

fn file_sha(path: &Path) -> String {
    sha(&std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_over_tcp() {
    if clients_missing() {
        return;
    }
    let f = fixture();
    let want = sha(&f.data);
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(
        f.image.clone(),
        "127.0.0.1:0",
        NbdOptions::new(NAME).description("lode test"),
    )
    .await;
    let uri = srv.uri();

    let size = blocking({
        let mut c = Command::new("nbdinfo");
        c.args(["--size", &uri]);
        c
    })
    .await;
    assert_eq!(size.trim(), f.data.len().to_string(), "nbdinfo --size");

    let json = blocking({
        let mut c = Command::new("nbdinfo");
        c.args(["--json", &uri]);
        c
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let export = &v["exports"][0];
    assert_eq!(export["export-size"], f.data.len() as u64, "{json}");
    assert_eq!(export["is_read_only"], true, "{json}");
    assert_eq!(export["can_multi_conn"], true, "{json}");
    assert_eq!(export["can_flush"], true, "{json}");
    assert_eq!(export["can_trim"], false, "{json}");
    assert_eq!(export["block_size_preferred"], CHUNK, "{json}");
    assert_eq!(export["description"], "lode test", "{json}");

    let list = blocking({
        let mut c = Command::new("nbdinfo");
        c.args(["--list", "--json", &srv.addr.uri("")]);
        c
    })
    .await;
    assert!(list.contains(NAME), "nbdinfo --list: {list}");

    // nbdcopy (4 connections, 16 requests each) and qemu-img at the same time.
    let a = dir.path().join("nbdcopy.img");
    let b = dir.path().join("qemu.img");
    let mut nbdcopy = Command::new("nbdcopy");
    nbdcopy
        .args(["--connections=4", "--requests=16", &uri])
        .arg(&a);
    let mut qemu = Command::new("qemu-img");
    qemu.args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&b);
    let (x, y) = tokio::join!(blocking(nbdcopy), blocking(qemu));
    drop((x, y));
    assert_eq!(file_sha(&a), want, "nbdcopy copy");
    assert_eq!(file_sha(&b), want, "qemu-img convert copy");

    // qemu-img sees a read-only raw export of the right size.
    let info = blocking({
        let mut c = Command::new("qemu-img");
        c.args(["info", "--output=json", "-f", "raw", &uri]);
        c
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"], f.data.len() as u64, "{info}");

    // libnbd itself refuses to write to a read-only export, so a write by a
    // real client fails too (the raw client checks the server's EPERM).
    let mut c = Command::new("nbdcopy");
    c.arg(&a).arg(&uri);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "nbdcopy into a read-only export succeeded"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_over_unix_socket() {
    if clients_missing() {
        return;
    }
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lode.sock");
    let srv = Running::start(
        f.image.clone(),
        &format!("unix:{}", sock.display()),
        NbdOptions::new(NAME),
    )
    .await;
    let uri = srv.uri();
    assert!(uri.starts_with("nbd+unix:///"), "{uri}");
    let size = blocking({
        let mut c = Command::new("nbdinfo");
        c.args(["--size", &uri]);
        c
    })
    .await;
    assert_eq!(size.trim(), f.data.len().to_string());
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    let mut nbdcopy = Command::new("nbdcopy");
    nbdcopy.arg(&uri).arg(&a);
    let mut qemu = Command::new("qemu-img");
    qemu.args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&b);
    blocking(nbdcopy).await;
    blocking(qemu).await;
    assert_eq!(file_sha(&a), sha(&f.data));
    assert_eq!(file_sha(&b), sha(&f.data));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_raw_clients() {
    let f = fixture();
    let srv = Running::start(f.image.clone(), "127.0.0.1:0", NbdOptions::new(NAME)).await;
    let data = Arc::new(f.data.clone());
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let addr = srv.tcp();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = tcp_go(addr, NAME).await;
            let mut rng = fastrand::Rng::with_seed(i);
            let mut offs = HashMap::new();
            for k in 0..32u64 {
                let len = rng.u32(1..200_000);
                let off = rng.u64(0..data.len() as u64 - u64::from(len));
                c.request(0, 0, k, off, len, &[]).await;
                offs.insert(k, off as usize);
            }
            let mut n = 0;
            for _ in 0..32 {
                let (k, err, d) = c.reply().await;
                assert_eq!(err, 0);
                let off = offs.remove(&k).unwrap();
                assert!(d == data[off..off + d.len()], "bytes at {off}");
                n += d.len();
            }
            assert!(offs.is_empty());
            n
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap() > 0);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stream_over_an_in_memory_pipe() {
    let f = fixture();
    let (client, server) = tokio::io::duplex(1 << 20);
    let (stop, stopped) = oneshot::channel::<()>();
    let image = f.image.clone();
    let task = tokio::spawn(async move {
        let opts = NbdOptions::new(NAME);
        worker::nbd::serve_stream(server, "pipe", image, &opts, async {
            let _ = stopped.await;
        })
        .await
    });
    let mut c = Client::hello(client, 3).await;
    let info = c.info_or_go(p::OPT_GO, "").await.unwrap();
    assert_eq!(info.size, f.data.len() as u64);
    assert_eq!(c.read(4096, 4096).await.unwrap(), &f.data[4096..8192]);
    // Shutdown closes the connection between requests.
    stop.send(()).unwrap();
    assert!(c.closed().await, "connection closed on shutdown");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_reads_first() {
    let data = test_bytes();
    // A slow store: every chunk fetch takes 300 ms.
    let source = Arc::new(
        MemorySource::new(TierId::untrusted("store")).with_latency(Duration::from_millis(300)),
    );
    let table = source
        .insert_image(&data, CHUNK, &Salt::new(1, [7; 32]))
        .expect("seal");
    let image = LazyImage::new(table, source, LazyImageOptions::default()).unwrap();
    let srv = Running::start(image, "127.0.0.1:0", NbdOptions::new(NAME)).await;
    let (mut c, _) = tcp_go(srv.tcp(), NAME).await;
    c.request(0, 0, 41, 0, 1000, &[]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = tokio::spawn(srv.stop());
    let (cookie, err, got) = c.reply().await;
    assert_eq!((cookie, err), (41, 0));
    assert_eq!(got, &data[..1000]);
    assert!(c.closed().await);
    stopping.await.unwrap();
}
