//! NBD export throughput: a whole-image copy with `nbdcopy` from lode's
//! server, against the same copy from `qemu-nbd` serving the same bytes
//! from a raw file (the baseline), and against reading the `LazyImage`
//! in-process (no network, no protocol).
//!
//! The image (48 MiB, 96 chunks of 512 KiB, 1 in 8 a hole) fits the
//! plaintext cache, so after the first pass this measures the NBD path,
//! not decryption. Needs `nbdcopy` (libnbd-bin) and `qemu-nbd`
//! (qemu-utils); parts whose tools are missing are skipped.
//!
//! `cargo bench -p lode-worker --bench nbd`
#![allow(missing_docs)] // criterion_group! generates an undocumented fn

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chunk_core::Salt;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use worker::nbd::{NbdOptions, NbdServer};
use worker::{LazyImage, LazyImageOptions, MemorySource, TierId};

const CHUNK: usize = 512 * 1024;
const CHUNKS: usize = 96;

fn image_bytes() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(1);
    let mut data = vec![0u8; CHUNK * CHUNKS];
    for (i, c) in data.chunks_mut(CHUNK).enumerate() {
        if i % 8 != 3 {
            c.iter_mut().for_each(|b| *b = rng.u8(..));
        }
    }
    data
}

fn build_image(data: &[u8]) -> LazyImage {
    let source = Arc::new(MemorySource::new(TierId::untrusted("store")));
    let table = source
        .insert_image(data, CHUNK as u32, &Salt::new(1, [7; 32]))
        .expect("seal");
    LazyImage::new(
        table,
        source,
        LazyImageOptions::default().plaintext_cache_bytes(128 << 20),
    )
    .expect("image")
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn nbdcopy(uri: &str) {
    let st = Command::new("nbdcopy")
        .args([uri, "null:"])
        .status()
        .expect("nbdcopy");
    assert!(st.success(), "nbdcopy {uri}");
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let data = image_bytes();
    let image = rt.block_on(async { build_image(&data) });
    let mut g = c.benchmark_group("nbd_copy_48MiB");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));

    g.bench_function("in_process_read_at", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut buf = vec![0u8; 2 << 20];
                let mut off = 0u64;
                while off < image.size() {
                    off += image.read_at(off, &mut buf).await.expect("read") as u64;
                }
            })
        })
    });

    if !have("nbdcopy") {
        eprintln!("skipped: nbdcopy missing (apt-get install libnbd-bin)");
        g.finish();
        return;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let uri = rt.block_on(async {
        let server = NbdServer::bind(&"127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let uri = server.uri("bench");
        tokio::spawn(
            server.serve(image.clone(), NbdOptions::new("bench"), async {
                let _ = stopped.await;
            }),
        );
        uri
    });
    g.bench_function("lode_nbd_nbdcopy", |b| b.iter(|| nbdcopy(&uri)));

    if have("qemu-nbd") {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("image.raw");
        std::fs::write(&raw, &data).expect("write raw");
        let sock = dir.path().join("qemu.sock");
        let child = Command::new("qemu-nbd")
            .args([
                "--read-only",
                "--persistent",
                "--shared=8",
                "-f",
                "raw",
                "-x",
                "bench",
                "-k",
            ])
            .arg(&sock)
            .arg(&raw)
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-nbd");
        let _kill = Kill(child);
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let qemu_uri = format!("nbd+unix:///bench?socket={}", sock.display());
        g.bench_function("qemu_nbd_unix_nbdcopy", |b| b.iter(|| nbdcopy(&qemu_uri)));

        // Same transport for lode.
        let lsock = dir.path().join("lode.sock");
        let (stop2, stopped2) = tokio::sync::oneshot::channel::<()>();
        let luri = rt.block_on(async {
            let listen = format!("unix:{}", lsock.display()).parse().expect("addr");
            let server = NbdServer::bind(&listen).await.expect("bind");
            let uri = server.uri("bench");
            tokio::spawn(
                server.serve(image.clone(), NbdOptions::new("bench"), async {
                    let _ = stopped2.await;
                }),
            );
            uri
        });
        g.bench_function("lode_nbd_unix_nbdcopy", |b| b.iter(|| nbdcopy(&luri)));
        let _ = stop2.send(());
    } else {
        eprintln!("skipped: qemu-nbd missing (apt-get install qemu-utils)");
    }
    let _ = stop.send(());
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
