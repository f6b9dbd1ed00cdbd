#!/usr/bin/env bash
# Flattening speed on one corpus image against two baselines, run in one go:
#   lode      `lode flatten` (or the flattener's `flatten` example if no lode binary)
#   gzip      single-thread `gzip -dc` of the same layer blobs (decompression is the floor)
#   baseline  `umoci unpack` + `mke2fs -d` (the pipeline lode replaces)
# Prints the median of RUNS runs, the two ratios and lode's peak RSS.
# Usage: bench/flatten.sh [CORPUS] [IMAGE]   (defaults: $LODE_CORPUS or ../shared/corpus, python-numpy)
# BIG=10 also generates a synthetic ~10 GiB image (200,000 small files + large ones,
# needs ~35 GiB free in TMPDIR) and reports lode's time and peak RSS on it.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-${LODE_CORPUS:-../shared/corpus}}
IMAGE=${2:-python-numpy}
RUNS=${RUNS:-3}
LAYOUT="$CORPUS/oci"
for t in gzip umoci mke2fs python3 /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "skipped: $t missing"; exit 0; }
done

if [[ -n "${LODE_BIN:-}" ]]; then
  LODE=("$LODE_BIN" flatten)
  lode_run() { "${LODE[@]}" "oci:$LAYOUT:$IMAGE" -o "$1"; }
else
  cargo build --release -q -p flattener --example flatten
  LODE=(target/release/examples/flatten)
  lode_run() { "${LODE[@]}" "oci:$LAYOUT:$IMAGE" "$1"; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lode-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Layer blobs of the image, from index.json -> manifest.
mapfile -t BLOBS < <(python3 - "$LAYOUT" "$IMAGE" <<'PY'
import json, sys
d, tag = sys.argv[1], sys.argv[2]
idx = json.load(open(f"{d}/index.json"))
m = [x for x in idx["manifests"] if x.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag][0]
man = json.load(open(f"{d}/blobs/sha256/{m['digest'][7:]}"))
for l in man["layers"]:
    print(f"{d}/blobs/sha256/{l['digest'][7:]}")
PY
)
UNCOMPRESSED=$(for b in "${BLOBS[@]}"; do gzip -dc "$b"; done | wc -c)

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

lode_t=(); gzip_t=(); base_t=()
for run in $(seq "$RUNS"); do
  sync
  s=$(now); lode_run "$WORK/lode.img" >/dev/null; e=$(now); lode_t+=("$(elapsed "$s" "$e")")
  rm -f "$WORK/lode.img"

  s=$(now); for b in "${BLOBS[@]}"; do gzip -dc "$b" >/dev/null; done; e=$(now); gzip_t+=("$(elapsed "$s" "$e")")

  rm -rf "$WORK/bundle" "$WORK/mke2fs.img"
  s=$(now)
  umoci unpack --image "$LAYOUT:$IMAGE" "$WORK/bundle" >/dev/null 2>&1
  # Size as in the corpus baselines: file bytes + 10% + 8 MiB, retried +15% until it fits.
  kib=$(du -sk --apparent-size "$WORK/bundle/rootfs" | cut -f1)
  size=$(( kib * 11 / 10 + 8192 ))
  until E2FSPROGS_FAKE_TIME=1748736000 LC_ALL=C mke2fs -q -F -t ext4 -b 4096 -I 256 -m 0 -O ^has_journal \
      -E root_owner=0:0,nodiscard,lazy_itable_init=0 -d "$WORK/bundle/rootfs" "$WORK/mke2fs.img" "${size}k" >/dev/null 2>&1; do
    size=$(( size * 115 / 100 ))
  done
  e=$(now); base_t+=("$(elapsed "$s" "$e")")
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
L=$(median "${lode_t[@]}"); G=$(median "${gzip_t[@]}"); B=$(median "${base_t[@]}")

# Peak RSS of one more lode run.
RSS=$( { /usr/bin/time -v "${LODE[@]}" "oci:$LAYOUT:$IMAGE" $([[ -n "${LODE_BIN:-}" ]] && echo -o) "$WORK/lode.img" >/dev/null; } 2>&1 \
  | awk -F': ' '/Maximum resident set size/ {print $2}')

python3 - "$IMAGE" "$UNCOMPRESSED" "$L" "$G" "$B" "$RSS" "$RUNS" "${lode_t[*]}" "${gzip_t[*]}" "${base_t[*]}" <<'PY'
import sys
img, unc, L, G, B, rss, runs, lt, gt, bt = sys.argv[1:]
unc, L, G, B, rss = int(unc), float(L), float(G), float(B), int(rss)
mb = unc / 1e6
print(f"image {img}: {unc/2**20:.1f} MiB of uncompressed layers, median of {runs} runs")
print()
print("| pipeline | seconds (median) | runs | MB/s of uncompressed layers |")
print("|---|---:|---|---:|")
print(f"| lode flatten | {L:.2f} | {lt} | {mb/L:.0f} |")
print(f"| gzip -dc (1 thread) | {G:.2f} | {gt} | {mb/G:.0f} |")
print(f"| umoci unpack + mke2fs -d | {B:.2f} | {bt} | {mb/B:.0f} |")
print()
print(f"| ratio | value | target |")
print(f"|---|---:|---:|")
print(f"| lode throughput / gzip -dc throughput | {G/L:.2f}x | >= 1.0x |")
print(f"| baseline time / lode time | {B/L:.2f}x | >= 2.0x |")
print(f"| lode peak RSS | {rss/1024:.0f} MiB | |")
PY

if [[ -n "${BIG:-}" ]]; then
  cargo build --release -q -p flattener --example make_big_image
  target/release/examples/make_big_image "$WORK/big" "$BIG" 2>/dev/null
  stats=$( { /usr/bin/time -v target/release/examples/flatten "oci:$WORK/big:big" "$WORK/big.img" >/dev/null; } 2>&1 )
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' <<<"$stats")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' <<<"$stats")
  size=$(stat -c %s "$WORK/big.img")
  echo
  echo "| synthetic image | image GiB | wall | lode peak RSS |"
  echo "|---|---:|---:|---:|"
  echo "| $BIG GiB, 200,000 small files | $(python3 -c "print(f'{$size/2**30:.1f}')") | $wall | $((rss / 1024)) MiB |"
fi
