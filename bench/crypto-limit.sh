#!/usr/bin/env bash
# How close is lode's single-thread `seal` to what the CPU's crypto allows?
#
# seal = HMAC-SHA256 over the plaintext + AES-256-GCM + SHA-256 over the
# ciphertext: two hash passes and one cipher pass. With OpenSSL's one-core
# speeds on 16 KiB blocks, the best possible seal throughput is
#     limit = 1 / (2/sha256 + 1/aes_gcm)
# This script measures both OpenSSL speeds and lode's seal (512 KiB chunks,
# one thread) interleaved over several rounds in one run, pinned to one CPU,
# and prints the medians; the last line is `seal/limit ratio: 0.NN`.
#
# Clock: `openssl speed` divides by the process's user CPU time unless given
# -elapsed, which makes it blind to other load on a shared machine. Both
# sides must use the same clock, so by default (CLOCK=cpu) lode's seal is
# also divided by user CPU time; CLOCK=wall uses wall-clock time for both
# (openssl -elapsed), meaningful only on an idle machine.
#
# Usage: bench/crypto-limit.sh [BACKEND]    (BACKEND: aws-lc-rs (default) | rustcrypto)
# Env:   ROUNDS (default 5), SECONDS_PER_RUN (default 2), BENCH_CPU (default 0),
#        CLOCK (cpu (default) | wall)
# Needs: openssl (CLI), cargo and a C compiler (aws-lc-rs), python3, taskset (optional).
set -euo pipefail

backend=${1:-aws-lc-rs}
rounds=${ROUNDS:-5}
secs=${SECONDS_PER_RUN:-2}
cpu=${BENCH_CPU:-0}
clock=${CLOCK:-cpu}
case "$clock" in
  cpu) elapsed=() ;;
  wall) elapsed=(-elapsed) ;;
  *) echo "CLOCK must be cpu or wall, got $clock" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)

case "$backend" in
  aws-lc-rs) features=aws-lc-rs ;;
  rustcrypto) features=rustcrypto ;;
  *) echo "unknown backend $backend (aws-lc-rs | rustcrypto)" >&2; exit 2 ;;
esac

command -v openssl >/dev/null || { echo "openssl CLI not found (apt-get install openssl)" >&2; exit 1; }
pin=()
if command -v taskset >/dev/null && taskset -c "$cpu" true 2>/dev/null; then pin=(taskset -c "$cpu"); fi

cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p lode-chunk-core \
  --no-default-features --features "$features" --example seal_throughput
target_dir=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
seal_bin="$target_dir/release/examples/seal_throughput"

# `openssl speed -mr` prints `+F:<n>:<alg>:<bytes per second>` for the one block size asked for.
openssl_mbps() {
  "${pin[@]}" openssl speed "${elapsed[@]}" -mr -seconds "$secs" -bytes 16384 -evp "$1" 2>/dev/null |
    awk -F: '/^\+F:/ { printf "%.1f\n", $4 / 1e6 }'
}

sha=() gcm=() seal=()
echo "openssl: $(openssl version)"
echo "clock: $clock time for openssl and lode alike"
echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), pinned: ${pin[*]:-no}"
printf '%-6s %14s %14s %14s\n' round "sha256 MB/s" "aes-gcm MB/s" "seal MB/s"
for r in $(seq 1 "$rounds"); do
  s=$(openssl_mbps sha256)
  g=$(openssl_mbps aes-256-gcm)
  l=$("${pin[@]}" "$seal_bin" "$backend" "$secs" | awk -F': ' -v c="($clock)" '$1 == "seal MB/s " c {print $2}')
  [ -n "$s" ] && [ -n "$g" ] && [ -n "$l" ] || { echo "a measurement printed nothing" >&2; exit 1; }
  sha+=("$s") gcm+=("$g") seal+=("$l")
  printf '%-6s %14s %14s %14s\n' "$r" "$s" "$g" "$l"
done

python3 - "$backend" "$clock" "${sha[*]}" "${gcm[*]}" "${seal[*]}" <<'PY'
import statistics as st, sys
backend, clock = sys.argv[1:3]
sha, gcm, seal = ([float(x) for x in a.split()] for a in sys.argv[3:6])
s, g, l = st.median(sha), st.median(gcm), st.median(seal)
limit = 1 / (2 / s + 1 / g)
print(f"median openssl sha256 16 KiB:      {s:9.1f} MB/s")
print(f"median openssl aes-256-gcm 16 KiB: {g:9.1f} MB/s")
print(f"single-core seal limit:            {limit:9.1f} MB/s  (1 / (2/sha256 + 1/aes_gcm))")
print(f"median lode seal ({backend}, 512 KiB, 1 thread, {clock} time): {l:9.1f} MB/s")
print(f"seal/limit ratio: {l / limit:.2f}")
PY
