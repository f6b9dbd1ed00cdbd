//! Single-thread `seal` throughput of one backend, for `bench/crypto-limit.sh`.
//!
//! ```text
//! cargo run --release -p chunk-core --features aws-lc-rs --example seal_throughput -- aws-lc-rs [SECONDS] [--parts]
//! ```
//!
//! Seals the same 512 KiB chunk over and over on the calling thread for
//! about SECONDS (default 3), split into rounds, and prints the median
//! round's throughput as its last line: `seal MB/s: N` (MB = 10^6 bytes, as
//! `openssl speed` counts). With `--parts` it first prints the throughput
//! of each primitive through the same provider.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chunk_core::{CryptoProvider, DEFAULT_CHUNK_SIZE, Salt, enabled_providers, provider_by_name, seal};

const ROUNDS: u32 = 7;

/// Runs `op` (processing `bytes` per call) in rounds and returns the median MB/s.
fn median_mbps(total: Duration, bytes: usize, mut op: impl FnMut()) -> f64 {
    let per_round = total / ROUNDS;
    let mut rates = Vec::new();
    op(); // warm up caches, allocator and CPU frequency
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < per_round {
            op();
            calls += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        rates.push(calls as f64 * bytes as f64 / secs / 1e6);
    }
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<_> = enabled_providers().iter().map(|p| p.name()).collect();
    let Some(provider) = args.first().and_then(|n| provider_by_name(n)) else {
        eprintln!("usage: seal_throughput BACKEND [SECONDS] [--parts]; compiled-in backends: {names:?}");
        return ExitCode::from(2);
    };
    let seconds: f64 = match args.get(1).filter(|a| !a.starts_with("--")) {
        Some(s) => match s.parse() {
            Ok(v) if v > 0.0 => v,
            _ => {
                eprintln!("SECONDS must be a positive number, got {s:?}");
                return ExitCode::from(2);
            }
        },
        None => 3.0,
    };
    let total = Duration::from_secs_f64(seconds);
    let plaintext: Vec<u8> = (0..DEFAULT_CHUNK_SIZE).map(|i| (i * 31 + 7) as u8).collect();
    let salt = Salt::new(1, [7; 32]);
    let p: &dyn CryptoProvider = provider;

    if args.iter().any(|a| a == "--parts") {
        let key = [9u8; 32];
        let sha = median_mbps(total, plaintext.len(), || {
            black_box(p.sha256(black_box(&plaintext)));
        });
        let hmac = median_mbps(total, plaintext.len(), || {
            black_box(p.hmac_sha256(&key, black_box(&plaintext)));
        });
        let mut buf = Vec::with_capacity(plaintext.len() + 16);
        let gcm = median_mbps(total, plaintext.len(), || {
            buf.clear();
            buf.extend_from_slice(&plaintext);
            if p.aes256gcm_seal_in_place(&key, &[0; 12], &[], &mut buf).is_err() {
                std::process::abort();
            }
            black_box(&buf);
        });
        println!("{} sha256 MB/s: {sha:.0}", p.name());
        println!("{} hmac-sha256 MB/s: {hmac:.0}", p.name());
        println!("{} aes-256-gcm (copy+seal) MB/s: {gcm:.0}", p.name());
    }

    let mut failed = false;
    let rate = median_mbps(total, plaintext.len(), || match seal(p, &salt, black_box(&plaintext)) {
        Ok(sealed) => {
            black_box(sealed);
        }
        Err(_) => failed = true,
    });
    if failed {
        eprintln!("seal failed");
        return ExitCode::FAILURE;
    }
    println!("backend: {}", p.name());
    println!("seal MB/s: {rate:.1}");
    ExitCode::SUCCESS
}
