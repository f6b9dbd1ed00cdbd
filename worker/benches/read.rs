//! Read throughput through `LazyImage` with an in-memory store.
//!
//! - `sequential/*`: the whole image in 128 KiB reads (what FUSE sends).
//! - `random_4k/*`: 4 KiB reads at random offsets.
//! - `cold`: a fresh `LazyImage` per iteration (every chunk fetched, name
//!   checked, decrypted); `warm`: the plaintext cache holds the image.
//! - `baseline/open_chunk`: `chunk_core::open` of one 512 KiB chunk, the
//!   crypto floor of a cold read; compare cold throughput against it.
//!
//! Run: `cargo bench -p lode-worker --bench read`.

use std::sync::Arc;

use chunk_core::{RustCrypto, Salt};
use criterion::{Criterion, Throughput, criterion_main};
use worker::{ChunkTable, LazyImage, LazyImageOptions, MemorySource, TierId};

const CHUNK: usize = 512 * 1024;
const IMAGE: usize = 32 << 20;

fn sealed_image() -> (ChunkTable, Arc<MemorySource>, Vec<u8>) {
    let mut rng = fastrand::Rng::with_seed(1);
    let data: Vec<u8> = (0..IMAGE).map(|_| rng.u8(..)).collect();
    let source = Arc::new(MemorySource::new(TierId::untrusted("store")));
    let table = source
        .insert_image(&data, CHUNK as u32, &Salt::new(1, [5; 32]))
        .expect("seal");
    (table, source, data)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (table, source, data) = sealed_image();
    let new_image = |cache: u64| {
        LazyImage::with_runtime(
            table.clone(),
            source.clone(),
            LazyImageOptions::default().plaintext_cache_bytes(cache),
            rt.handle().clone(),
        )
        .expect("image")
    };
    let read_all = |image: &LazyImage| {
        rt.block_on(async {
            let mut buf = vec![0u8; 128 * 1024];
            let mut off = 0u64;
            while off < IMAGE as u64 {
                off += image.read_at(off, &mut buf).await.expect("read") as u64;
            }
        })
    };
    let offsets: Vec<u64> = {
        let mut rng = fastrand::Rng::with_seed(2);
        (0..256).map(|_| rng.u64(..(IMAGE - 4096) as u64)).collect()
    };
    let read_random = |image: &LazyImage| {
        rt.block_on(async {
            let mut buf = vec![0u8; 4096];
            for &off in &offsets {
                image.read_at(off, &mut buf).await.expect("read");
            }
        })
    };

    let mut g = c.benchmark_group("sequential");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(IMAGE as u64));
    g.bench_function("cold", |b| b.iter(|| read_all(&new_image(64 << 20))));
    let warm = new_image(2 * IMAGE as u64);
    read_all(&warm);
    g.bench_function("warm", |b| b.iter(|| read_all(&warm)));
    g.finish();

    let mut g = c.benchmark_group("random_4k");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(offsets.len() as u64 * 4096));
    g.bench_function("cold", |b| b.iter(|| read_random(&new_image(64 << 20))));
    let warm = new_image(2 * IMAGE as u64);
    read_all(&warm);
    g.bench_function("warm", |b| b.iter(|| read_random(&warm)));
    g.finish();

    let mut g = c.benchmark_group("baseline");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(CHUNK as u64));
    let one = table.chunks[0].clone().expect("chunk");
    let ct = rt
        .block_on(async {
            use worker::ChunkSource;
            source.fetch(&one.name).await
        })
        .expect("fetch")
        .bytes;
    g.bench_function("open_chunk", |b| {
        b.iter(|| chunk_core::open(&RustCrypto, &one, &ct).expect("open"))
    });
    g.bench_function("memcpy_chunk", |b| b.iter(|| data[..CHUNK].to_vec()));
    g.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;
criterion_main!(benches);
