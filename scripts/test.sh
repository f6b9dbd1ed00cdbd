#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/integration/property tests with
# real servers and mounts, docs, and a short run of every fuzz target.
# Usage: ./scripts/test.sh            (as root on Debian; installs what it needs)
# Env:   LODE_CORPUS (default ../shared/corpus when present), FUZZ_SECONDS (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "dependencies"
./scripts/install-deps.sh

# Tests that need a server or tool fail instead of skipping: everything is installed.
export LODE_REQUIRE_SERVERS=1
if [[ -z "${LODE_CORPUS:-}" && -d ../shared/corpus ]]; then
  LODE_CORPUS=../shared/corpus
fi
# Absolute: cargo runs each crate's tests from that crate's directory.
if [[ -n "${LODE_CORPUS:-}" ]]; then
  if [[ -d $LODE_CORPUS ]]; then
    LODE_CORPUS="$(cd "$LODE_CORPUS" && pwd)"
  else
    echo "warning: LODE_CORPUS=$LODE_CORPUS is not a directory; corpus tests will be skipped" >&2
    LODE_CORPUS=
  fi
fi
export LODE_CORPUS="${LODE_CORPUS:-}"
[[ -n "$LODE_CORPUS" ]] && echo "corpus: $LODE_CORPUS" || echo "corpus: none (corpus tests will say they were skipped)"
export CARGO_TERM_COLOR=never RUST_BACKTRACE=1

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings (default features)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test --workspace --all-features"
cargo test --workspace --all-features

step "cargo test -p lode-chunk-core --no-default-features --features aws-lc-rs (second crypto backend alone)"
cargo test -p lode-chunk-core --no-default-features --features aws-lc-rs

step "cargo doc --workspace --no-deps (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

if [[ -f fuzz/Cargo.toml ]]; then
  step "fuzz targets, ${FUZZ_SECONDS:-60} s each"
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked -q cargo-fuzz
  # Only stable Rust is installed: RUSTC_BOOTSTRAP unlocks the flags cargo-fuzz needs.
  export RUSTC_BOOTSTRAP=1
  # With aws-lc-rs on, chunk_open also runs every input through the second
  # backend and fails if the two disagree.
  (cd fuzz && cargo fuzz build -O -s none --features aws-lc-rs)
  for target in $(cd fuzz && cargo fuzz list); do
    echo "fuzzing $target"
    (cd fuzz && cargo fuzz run -O -s none --features aws-lc-rs "$target" -- -max_total_time="${FUZZ_SECONDS:-60}" -rss_limit_mb=4096 2>&1 | tail -n 3)
  done
fi

echo
echo "all checks passed in $(( $(date +%s) - started )) s"
