//! Single-thread `seal` throughput of one backend, for `bench/crypto-limit.sh`.
//!
//! ```text
//! cargo run --release -p chunk-core --features aws-lc-rs --example seal_throughput -- aws-lc-rs [SECONDS] [--parts]
//! ```
//!
//! Seals the same 512 KiB chunk over and over on the calling thread for
//! about SECONDS (default 3), split into rounds, and prints the median
//! round's throughput (MB = 10^6 bytes, as `openssl speed` counts) twice:
//! - `seal MB/s (cpu): N` divides by the process's user CPU time, exactly
//!   as `openssl speed` does by default, so the two compare fairly on a
//!   busy shared machine;
//! - `seal MB/s (wall): N` divides by wall-clock time (compare with
//!   `openssl speed -elapsed`).
//!
//! With `--parts` it first prints the throughput of each primitive through
//! the same provider.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chunk_core::{
    CryptoProvider, DEFAULT_CHUNK_SIZE, Salt, enabled_providers, provider_by_name, seal,
};

const ROUNDS: u32 = 7;

/// User CPU time of this process in seconds (what `openssl speed` divides by).
fn user_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass; all-zero bytes
    // are a valid `rusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF is a valid `who`, and `usage` is a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return f64::NAN;
    }
    usage.ru_utime.tv_sec as f64 + usage.ru_utime.tv_usec as f64 * 1e-6
}

struct Rates {
    cpu: f64,
    wall: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `op` (processing `bytes` per call) in rounds; median MB/s per clock.
fn measure(total: Duration, bytes: usize, mut op: impl FnMut()) -> Rates {
    let per_round = total / ROUNDS;
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    op(); // warm up caches, allocator and CPU frequency
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let cpu_start = user_cpu_seconds();
        let mut calls = 0u64;
        while start.elapsed() < per_round {
            op();
            calls += 1;
        }
        let done = calls as f64 * bytes as f64 / 1e6;
        wall.push(done / start.elapsed().as_secs_f64());
        cpu.push(done / (user_cpu_seconds() - cpu_start));
    }
    Rates {
        cpu: median(cpu),
        wall: median(wall),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<_> = enabled_providers().iter().map(|p| p.name()).collect();
    let Some(provider) = args.first().and_then(|n| provider_by_name(n)) else {
        eprintln!(
            "usage: seal_throughput BACKEND [SECONDS] [--parts]; compiled-in backends: {names:?}"
        );
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
    let plaintext: Vec<u8> = (0..DEFAULT_CHUNK_SIZE)
        .map(|i| (i * 31 + 7) as u8)
        .collect();
    let salt = Salt::new(1, [7; 32]);
    let p: &dyn CryptoProvider = provider;

    if args.iter().any(|a| a == "--parts") {
        let key = [9u8; 32];
        let sha = measure(total, plaintext.len(), || {
            black_box(p.sha256(black_box(&plaintext)));
        });
        let hmac = measure(total, plaintext.len(), || {
            black_box(p.hmac_sha256(&key, black_box(&plaintext)));
        });
        let mut buf = Vec::with_capacity(plaintext.len() + 16);
        let gcm = measure(total, plaintext.len(), || {
            buf.clear();
            buf.extend_from_slice(&plaintext);
            if p.aes256gcm_seal_in_place(&key, &[0; 12], &[], &mut buf)
                .is_err()
            {
                std::process::abort();
            }
            black_box(&buf);
        });
        for (what, r) in [
            ("sha256", sha),
            ("hmac-sha256", hmac),
            ("aes-256-gcm (copy+seal)", gcm),
        ] {
            println!(
                "{} {what} MB/s (cpu): {:.0}  (wall): {:.0}",
                p.name(),
                r.cpu,
                r.wall
            );
        }
    }

    let mut failed = false;
    let rate = measure(total, plaintext.len(), || {
        match seal(p, &salt, black_box(&plaintext)) {
            Ok(sealed) => {
                black_box(sealed);
            }
            Err(_) => failed = true,
        }
    });
    if failed {
        eprintln!("seal failed");
        return ExitCode::FAILURE;
    }
    println!("backend: {}", p.name());
    println!("seal MB/s (wall): {:.1}", rate.wall);
    println!("seal MB/s (cpu): {:.1}", rate.cpu);
    ExitCode::SUCCESS
}
