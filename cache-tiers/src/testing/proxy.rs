//! A TCP proxy on loopback that can delay responses or cut connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Forwards connections from a loopback port to an upstream address.
///
/// - [`set_delay`](Self::set_delay): every byte from upstream reaches the
///   client that much later (a pure latency shift: data is released at
///   arrival time + delay, so throughput is unchanged).
/// - [`set_blocked`](Self::set_blocked): cuts open connections and refuses
///   new ones (accepts and closes them) until unblocked.
///
/// - [`set_http_503`](Self::set_http_503): answers every new connection's
///   first request with `HTTP/1.1 503 Service Unavailable` itself.
///
/// Stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    delay_us: Arc<AtomicU64>,
    http_503: Arc<AtomicBool>,
    /// (blocked, epoch): connections end when blocked or when the epoch moves on.
    blocked: watch::Sender<(bool, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let delay_us = Arc::new(AtomicU64::new(0));
        let (blocked, _) = watch::channel((false, 0u64));
        let d = Arc::clone(&delay_us);
        let http_503 = Arc::new(AtomicBool::new(false));
        let h = Arc::clone(&http_503);
        let b = blocked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if b.borrow().0 {
                    drop(client);
                    continue;
                }
                if h.load(Relaxed) {
                    tokio::spawn(answer_503(client));
                    continue;
                }
                let d = Arc::clone(&d);
                let rx = b.subscribe();
                tokio::spawn(async move {
                    let _ = serve(client, upstream, d, rx).await;
                });
            }
        });
        Ok(Self {
            addr,
            delay_us,
            http_503,
            blocked,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the delay added to everything upstream sends.
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Relaxed);
    }

    /// Answer new connections with HTTP 503 (true) or forward them (false).
    /// Open connections are cut when this is turned on.
    pub fn set_http_503(&self, yes: bool) {
        self.http_503.store(yes, Relaxed);
        if yes {
            // Cut pooled connections so the next request sees the 503.
            self.blocked.send_modify(|(_, epoch)| *epoch += 1);
        }
    }

    /// Cuts (true) or restores (false) the connection to upstream.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.send_modify(|(b, epoch)| {
            *b = blocked;
            *epoch += 1;
        });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set_blocked(true);
        self.task.abort();
    }
}

async fn answer_503(mut client: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    // Read the request head (and whatever body came with it), then answer.
    let _ = tokio::time::timeout(Duration::from_millis(200), client.read(&mut buf)).await;
    let _ = client
        .write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
    let _ = client.shutdown().await;
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    delay_us: Arc<AtomicU64>,
    mut blocked: watch::Receiver<(bool, u64)>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                return sw.shutdown().await;
            }
            sw.write_all(&buf[..n]).await?;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let down_read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = sr.read(&mut buf).await?;
            let release = Instant::now() + Duration::from_micros(delay_us.load(Relaxed));
            if tx.send((release, buf[..n].to_vec())).is_err() || n == 0 {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let down_write = async {
        while let Some((release, data)) = rx.recv().await {
            tokio::time::sleep_until(release.into()).await;
            if data.is_empty() {
                return cw.shutdown().await;
            }
            cw.write_all(&data).await?;
        }
        Ok(())
    };
    let start_epoch = blocked.borrow().1;
    let cut = async {
        loop {
            let (b, epoch) = *blocked.borrow_and_update();
            if b || epoch != start_epoch {
                return;
            }
            if blocked.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        r = async { tokio::try_join!(up, down_read, down_write) } => r.map(|_| ()),
        () = cut => Ok(()),
    }
}
