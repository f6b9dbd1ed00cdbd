//! Sequential read throughput of an image through the FUSE file (cold and
//! page-cache warm) against `LazyImage::read_at` directly, same process,
//! in-memory store. Needs root and `/dev/fuse`.
//!
//! Run: `cargo run --release -p worker --example fuse_throughput [MiB]`.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use chunk_core::Salt;
use worker::{LazyImage, LazyImageOptions, MemorySource, MountOptions, TierId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args().nth(1).map_or(Ok(256), |a| a.parse())?;
    let size = mib << 20;
    let chunk = chunk_core::DEFAULT_CHUNK_SIZE;
    let mut rng = fastrand::Rng::with_seed(3);
    let data: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
    let source = Arc::new(MemorySource::new(TierId::untrusted("store")));
    let table = source.insert_image(&data, chunk as u32, &Salt::new(1, [1; 32]))?;
    let rt = tokio::runtime::Runtime::new()?;
    let image = || {
        LazyImage::with_runtime(
            table.clone(),
            source.clone(),
            LazyImageOptions::default(),
            rt.handle().clone(),
        )
    };
    let mib_s = |secs: f64| size as f64 / (1 << 20) as f64 / secs;

    let direct = image()?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; 128 * 1024];
    let mut off = 0u64;
    while off < size as u64 {
        off += direct.read_at_blocking(off, &mut buf)? as u64;
    }
    let direct_s = t0.elapsed().as_secs_f64();

    let dir = tempfile::tempdir()?;
    let opts = MountOptions::default()
        .file_only(true)
        .state_dir(dir.path().join("state"));
    let handle = worker::mount(image()?, &dir.path().join("mnt").tap_mkdir()?, &opts)?;
    let read_file = || -> std::io::Result<f64> {
        let t0 = Instant::now();
        let mut f = std::fs::File::open(handle.state().image_file.clone())?;
        let mut n = 0;
        loop {
            let k = f.read(&mut buf.clone())?;
            if k == 0 {
                break;
            }
            n += k;
        }
        assert_eq!(n, size);
        Ok(t0.elapsed().as_secs_f64())
    };
    let cold = read_file()?;
    let warm = read_file()?;
    let stats = handle.image().stats();
    handle.unmount()?;
    println!("image {mib} MiB, 512 KiB chunks, in-memory store, RustCrypto");
    println!("| path | MiB/s |");
    println!("|---|---|");
    println!(
        "| LazyImage::read_at_blocking, cold | {:.0} |",
        mib_s(direct_s)
    );
    println!("| FUSE file, cold | {:.0} |", mib_s(cold));
    println!("| FUSE file, page cache warm | {:.0} |", mib_s(warm));
    println!(
        "FUSE reads: {} requests, mean {} us, p99 {} us",
        stats.reads, stats.read_latency.mean_us, stats.read_latency.p99_us
    );
    Ok(())
}

trait MkDir {
    fn tap_mkdir(self) -> std::io::Result<std::path::PathBuf>;
}

impl MkDir for std::path::PathBuf {
    fn tap_mkdir(self) -> std::io::Result<std::path::PathBuf> {
        std::fs::create_dir_all(&self)?;
        Ok(self)
    }
}
