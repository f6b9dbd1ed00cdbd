#!/usr/bin/env bash
# Get latency of every cache tier as one table (cache-tiers/benches/tiers.rs).
# Needs `memcached` on PATH for the L2 rows (apt-get install memcached).
# LODE_BENCH_SAMPLES=N sets samples per L2 row (default 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p lode-cache-tiers --bench tiers "$@"
