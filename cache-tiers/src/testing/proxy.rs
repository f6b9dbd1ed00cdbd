//! A TCP proxy on loopback that can delay responses or cut connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
/// Stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    delay_us: Arc<AtomicU64>,
    blocked: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let delay_us = Arc::new(AtomicU64::new(0));
        let (blocked, _) = watch::channel(false);
        let d = Arc::clone(&delay_us);
        let b = blocked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *b.borrow() {
                    drop(client);
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

    /// Cuts (true) or restores (false) the connection to upstream.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.send_replace(blocked);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set_blocked(true);
        self.task.abort();
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    delay_us: Arc<AtomicU64>,
    mut blocked: watch::Receiver<bool>,
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
    let cut = async {
        loop {
            if *blocked.borrow_and_update() {
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
