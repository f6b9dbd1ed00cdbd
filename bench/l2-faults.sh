#!/usr/bin/env bash
# Cold read of every chunk of an image through a 4+1 L2 (five real memcached
# processes) on a store that answers after 20 ms (cache_tiers::Delayed):
# all nodes up, one node hung (SIGSTOP), one hung and one dead (killed), and
# L2 off. Prints: case | time | ratio to all up | slowest read | store GETs,
# medians of LODE_BENCH_REPS runs (default 5) over LODE_BENCH_CHUNKS chunks
# of 64 KiB (default 128). Each run uses a fresh L2 key prefix (cold).
# Then a cold herd: 1, 8 and 32 workers (each its own L2 client) reading
# one image at once, fetch markers off and on: store GETs per distinct chunk.
# Needs `memcached` on PATH (apt-get install memcached).
# Reproduce: bench/l2-faults.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p lode-worker --test l2 -- --ignored --exact l2_fault_table --nocapture "$@"
exec cargo test --release -p lode-worker --test l2 -- --ignored --exact cold_herd_table --nocapture "$@"
