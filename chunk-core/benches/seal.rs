//! Seal and open 512 KiB chunks, per backend, on one thread and on all
//! threads (`seal_batch`, and rayon for open).
//!
//! `cargo bench -p chunk-core --all-features --bench seal`; medians land in
//! `target/criterion/<group>/<id>/new/estimates.json`.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use chunk_core::{DEFAULT_CHUNK_SIZE, Salt, enabled_providers, open, seal, seal_batch};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rayon::prelude::*;

fn plaintexts(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|c| {
            (0..DEFAULT_CHUNK_SIZE)
                .map(|i| (i.wrapping_mul(31) ^ c.wrapping_mul(131)) as u8)
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let salt = Salt::new(1, [7; 32]);
    let threads = rayon::current_num_threads();
    // Enough chunks that every thread gets several.
    let batch = (threads * 4).max(8);
    let inputs = plaintexts(batch);
    let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();

    for &p in enabled_providers() {
        let sealed = seal_batch(p, &salt, &refs).expect("seal");

        let mut one = c.benchmark_group("chunk_512KiB_1_thread");
        one.throughput(Throughput::Bytes(DEFAULT_CHUNK_SIZE as u64));
        one.bench_function(BenchmarkId::new("seal", p.name()), |b| {
            b.iter(|| seal(p, &salt, black_box(refs[0])).expect("seal"))
        });
        one.bench_function(BenchmarkId::new("open", p.name()), |b| {
            let r = sealed[0].chunk_ref();
            b.iter(|| open(p, &r, black_box(&sealed[0].ciphertext)).expect("open"))
        });
        one.finish();

        let mut all = c.benchmark_group(format!("chunk_512KiB_x{batch}_{threads}_threads"));
        all.throughput(Throughput::Bytes((DEFAULT_CHUNK_SIZE * batch) as u64));
        all.bench_function(BenchmarkId::new("seal_batch", p.name()), |b| {
            b.iter(|| seal_batch(p, &salt, black_box(&refs)).expect("seal"))
        });
        all.bench_function(BenchmarkId::new("open_par", p.name()), |b| {
            b.iter(|| {
                sealed
                    .par_iter()
                    .map(|s| open(p, &s.chunk_ref(), black_box(&s.ciphertext)))
                    .collect::<Result<Vec<_>, _>>()
                    .expect("open")
            })
        });
        all.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
