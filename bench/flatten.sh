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
  cargo build --release -q -p lode-flattener --example flatten
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

# Runs a command under /usr/bin/time; appends "wall cpu" (cpu = user + sys) to the
# array named $1 and returns the command's status.
timed() {
  local arr=$1; shift
  local rc=0
  /usr/bin/time -o "$WORK/time" -f "%e %U %S" "$@" >/dev/null 2>&1 || rc=$?
  local out
  out=$(tail -n 1 "$WORK/time" | awk '{printf "%s %.2f", $1, $2 + $3}')
  eval "$arr+=(\"\$out\")"
  return $rc
}

lode_r=(); gzip_r=(); umoci_r=(); mke2fs_r=()
for run in $(seq "$RUNS"); do
  sync
  timed lode_r "${LODE[@]}" "oci:$LAYOUT:$IMAGE" $([[ -n "${LODE_BIN:-}" ]] && echo -o) "$WORK/lode.img"
  rm -f "$WORK/lode.img"

  timed gzip_r bash -c 'for b in "$@"; do gzip -dc "$b"; done' _ "${BLOBS[@]}"

  rm -rf "$WORK/bundle" "$WORK/mke2fs.img"
  timed umoci_r umoci unpack --image "$LAYOUT:$IMAGE" "$WORK/bundle"
  # Size as in the corpus baselines: file bytes + 10% + 8 MiB, retried +15% until it fits.
  kib=$(du -sk --apparent-size "$WORK/bundle/rootfs" | cut -f1)
  size=$(( kib * 11 / 10 + 8192 ))
  until timed mke2fs_r env E2FSPROGS_FAKE_TIME=1748736000 LC_ALL=C mke2fs -q -F -t ext4 -b 4096 -I 256 -m 0 -O ^has_journal \
      -E root_owner=0:0,nodiscard,lazy_itable_init=0 -d "$WORK/bundle/rootfs" "$WORK/mke2fs.img" "${size}k"; do
    unset "mke2fs_r[$(( ${#mke2fs_r[@]} - 1 ))]"; mke2fs_r=("${mke2fs_r[@]}")
    size=$(( size * 115 / 100 ))
  done
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { local i=$1; shift; for x in "$@"; do echo "$x" | cut -d' ' -f"$i"; done; }
L=$(median $(col 1 "${lode_r[@]}")); LC=$(median $(col 2 "${lode_r[@]}"))
G=$(median $(col 1 "${gzip_r[@]}")); GC=$(median $(col 2 "${gzip_r[@]}"))
UB=$(median $(col 1 "${umoci_r[@]}")); UC=$(median $(col 2 "${umoci_r[@]}"))
MB=$(median $(col 1 "${mke2fs_r[@]}")); MC=$(median $(col 2 "${mke2fs_r[@]}"))
B=$(python3 -c "print($UB + $MB)"); BC=$(python3 -c "print($UC + $MC)")
lode_t=($(col 1 "${lode_r[@]}")); gzip_t=($(col 1 "${gzip_r[@]}")); base_t=()
for i in "${!umoci_r[@]}"; do base_t+=("$(python3 -c "print(round($(col 1 "${umoci_r[$i]}") + $(col 1 "${mke2fs_r[$i]}"), 2))")"); done

# Peak RSS of one more lode run.
RSS=$( { /usr/bin/time -v "${LODE[@]}" "oci:$LAYOUT:$IMAGE" $([[ -n "${LODE_BIN:-}" ]] && echo -o) "$WORK/lode.img" >/dev/null; } 2>&1 \
  | awk -F': ' '/Maximum resident set size/ {print $2}')

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$IMAGE" "$UNCOMPRESSED" "$L" "$G" "$B" "$RSS" "$RUNS" "${lode_t[*]}" "${gzip_t[*]}" "${base_t[*]}" "$LC" "$GC" "$BC" "$LOAD" <<'PY'
import sys
img, unc, L, G, B, rss, runs, lt, gt, bt, LC, GC, BC, load = sys.argv[1:]
unc, L, G, B, rss, LC, GC, BC = int(unc), float(L), float(G), float(B), int(rss), float(LC), float(GC), float(BC)
mb = unc / 1e6
print(f"image {img}: {unc/2**20:.1f} MiB of uncompressed layers, median of {runs} runs, load average {load}")
print()
print("| pipeline | wall s (median) | wall s per run | MB/s of uncompressed layers | CPU s (user+sys, median) |")
print("|---|---:|---|---:|---:|")
print(f"| lode flatten | {L:.2f} | {lt} | {mb/L:.0f} | {LC:.2f} |")
print(f"| gzip -dc (1 thread) | {G:.2f} | {gt} | {mb/G:.0f} | {GC:.2f} |")
print(f"| umoci unpack + mke2fs -d | {B:.2f} | {bt} | {mb/B:.0f} | {BC:.2f} |")
print()
print(f"| ratio | value | target |")
print(f"|---|---:|---:|")
print(f"| lode throughput / gzip -dc throughput | {G/L:.2f}x | >= 1.0x |")
print(f"| baseline time / lode time | {B/L:.2f}x | >= 2.0x |")
print(f"| gzip CPU / lode CPU (load-independent) | {GC/LC:.2f}x | |")
print(f"| baseline CPU / lode CPU | {BC/LC:.2f}x | |")
print(f"| lode peak RSS | {rss/1024:.0f} MiB | |")
PY

if [[ -n "${BIG:-}" ]]; then
  cargo build --release -q -p lode-flattener --example make_big_image
  target/release/examples/make_big_image "$WORK/big" "$BIG" 2>/dev/null
  out_flag=(); [[ -n "${LODE_BIN:-}" ]] && out_flag=(-o)
  stats=$( { /usr/bin/time -v "${LODE[@]}" "oci:$WORK/big:big" "${out_flag[@]}" "$WORK/big.img" >/dev/null; } 2>&1 )
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' <<<"$stats")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' <<<"$stats")
  size=$(stat -c %s "$WORK/big.img")
  echo
  echo "| synthetic image | image GiB | wall | lode peak RSS |"
  echo "|---|---:|---:|---:|"
  echo "| $BIG GiB, 200,000 small files | $(python3 -c "print(f'{$size/2**30:.1f}')") | $wall | $((rss / 1024)) MiB |"
fi
