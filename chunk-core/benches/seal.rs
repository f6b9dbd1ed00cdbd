//! Seal and open 512 KiB chunks, per backend, on one thread and on all
//! threads (`seal_batch`, and rayon for open).
//!
//! `cargo bench -p lode-chunk-core --all-features --bench seal`; medians land in
//! `target/criterion/<group>/<bench>/<backend>/new/estimates.json`.
//!
//! The one-thread group measures the thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), like `openssl speed`'s default user-time
//! divisor, so it stays meaningful on a busy shared machine. The
//! all-threads group must measure wall-clock time (that is what parallelism
//! buys) and is only meaningful when the machine is otherwise idle.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use chunk_core::{
    DEFAULT_CHUNK_SIZE, Salt, enabled_providers, is_all_zero, open, seal, seal_batch,
};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rayon::prelude::*;

/// CPU time consumed by the calling thread, in nanoseconds.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NanosFormatter
    }
}

/// Formats nanoseconds and decimal throughputs (MB/s, as `openssl speed`).
struct NanosFormatter;

impl ValueFormatter for NanosFormatter {
    fn scale_values(&self, ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if ns < 1e3 {
            (1.0, "ns")
        } else if ns < 1e6 {
            (1e-3, "µs (cpu)")
        } else {
            (1e-6, "ms (cpu)")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per_iter = match *t {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Elements(n) => {
                n as f64
            }
        };
        values
            .iter_mut()
            .for_each(|v| *v = per_iter * 1e9 / *v / 1e6);
        match *t {
            Throughput::Elements(_) => "Melem/s (cpu)",
            _ => "MB/s (cpu)",
        }
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn plaintexts(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|c| {
            (0..DEFAULT_CHUNK_SIZE)
                .map(|i| (i.wrapping_mul(31) ^ c.wrapping_mul(131)) as u8)
                .collect()
        })
        .collect()
}

fn one_thread(c: &mut Criterion<ThreadCpuTime>) {
    let salt = Salt::new(1, [7; 32]);
    let input = plaintexts(1).remove(0);
    for &p in enabled_providers() {
        let sealed = seal(p, &salt, &input).expect("seal");
        let r = sealed.chunk_ref();
        let mut g = c.benchmark_group("chunk_512KiB_1_thread");
        g.throughput(Throughput::BytesDecimal(DEFAULT_CHUNK_SIZE as u64));
        g.bench_function(BenchmarkId::new("seal", p.name()), |b| {
            b.iter(|| seal(p, &salt, black_box(&input)).expect("seal"))
        });
        g.bench_function(BenchmarkId::new("open", p.name()), |b| {
            b.iter(|| open(p, &r, black_box(&sealed.ciphertext)).expect("open"))
        });
        g.finish();
    }
    // The chunker's hole test scans every byte of a hole: it must run at
    // memory speed, far above the crypto.
    let zeros = vec![0u8; DEFAULT_CHUNK_SIZE];
    let mut g = c.benchmark_group("chunk_512KiB_1_thread");
    g.throughput(Throughput::BytesDecimal(DEFAULT_CHUNK_SIZE as u64));
    g.bench_function("is_all_zero", |b| b.iter(|| is_all_zero(black_box(&zeros))));
    g.finish();
}

fn all_threads(c: &mut Criterion<WallTime>) {
    let salt = Salt::new(1, [7; 32]);
    let threads = rayon::current_num_threads();
    // Enough chunks that every thread gets several.
    let batch = (threads * 4).max(8);
    let inputs = plaintexts(batch);
    let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    for &p in enabled_providers() {
        let sealed = seal_batch(p, &salt, &refs).expect("seal");
        let mut g = c.benchmark_group(format!("chunk_512KiB_x{batch}_{threads}_threads"));
        g.throughput(Throughput::BytesDecimal(
            (DEFAULT_CHUNK_SIZE * batch) as u64,
        ));
        g.bench_function(BenchmarkId::new("seal_batch", p.name()), |b| {
            b.iter(|| seal_batch(p, &salt, black_box(&refs)).expect("seal"))
        });
        g.bench_function(BenchmarkId::new("open_par", p.name()), |b| {
            b.iter(|| {
                sealed
                    .par_iter()
                    .map(|s| open(p, &s.chunk_ref(), black_box(&s.ciphertext)))
                    .collect::<Result<Vec<_>, _>>()
                    .expect("open")
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = one_thread_benches;
    config = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = one_thread
}
criterion_group! {
    name = all_threads_benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = all_threads
}
criterion_main!(one_thread_benches, all_threads_benches);
