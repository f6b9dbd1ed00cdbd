//! Log lines of `lode` and the libraries it wires, on stderr.
//!
//! `LODE_LOG` takes an `EnvFilter` directive (`debug`, `worker=trace,info`,
//! ...). Without it lode's own crates log at `info` (`debug` with `-v`,
//! `trace` with `-vv`) and everything else at `warn`. The mount daemon's
//! stderr becomes its `--log-file` once it is ready, so its lines land there.

use tracing_subscriber::EnvFilter;

/// The crates whose log lines are lode's own (their tracing targets).
const LODE_CRATES: &[&str] = &[
    "lode",
    "worker",
    "cache_tiers",
    "chunk_core",
    "flattener",
    "manifest",
    "kms_envelope",
    "lode_store",
];

/// The filter directive used when `LODE_LOG` is not set.
pub fn default_directive(verbose: u8) -> String {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let mut d = String::from("warn");
    for c in LODE_CRATES {
        d.push_str(&format!(",{c}={level}"));
    }
    d
}

/// Installs the global subscriber. A bad `LODE_LOG` is reported and the
/// default is used, so a typo never stops a mount.
pub fn init(verbose: u8) {
    let default = default_directive(verbose);
    let (filter, bad) = match std::env::var("LODE_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(&default), Some((spec, e))),
        },
        _ => (EnvFilter::new(&default), None),
    };
    // Writes through `std::io::stderr()` per event (fd 2), so a daemon that
    // later points fd 2 at its log file keeps logging there.
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init()
        .is_ok();
    if let (true, Some((spec, e))) = (installed, bad) {
        tracing::warn!(LODE_LOG = %spec, error = %e, "ignoring an invalid LODE_LOG");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_directive_parses_and_raises_with_verbose() {
        for v in 0..3 {
            let d = default_directive(v);
            EnvFilter::try_new(&d).expect("valid directive");
            assert!(d.starts_with("warn,"), "{d}");
        }
        assert!(default_directive(0).contains("worker=info"));
        assert!(default_directive(1).contains("worker=debug"));
        assert!(default_directive(2).contains("lode=trace"));
    }
}
