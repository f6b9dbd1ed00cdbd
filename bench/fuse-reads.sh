#!/usr/bin/env bash
# Cost of a read through lode's FUSE file once its chunks are in the
# worker's memory: what every 4 KiB request of a start with kernel readahead
# 0 pays. `dd iflag=direct` reads the mounted image file (every read is one
# FUSE request) and, as the baseline in the same run, the same bytes from a
# plain file (`lode pull`) on local disk with O_DIRECT. Prints the median of
# RUNS passes per row and the per-request time.
#
# Usage: sudo bench/fuse-reads.sh [CORPUS] [IMAGE]   (default: python-app)
# Env:   RUNS (default 3), COUNT (4 KiB reads per pass, default 30000), LODE_BIN
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
mount_bench_setup lode-fuse-reads "$@"
COUNT=${COUNT:-30000}
need_tools dd

"$LODE" push "oci:$CORPUS/oci:$IMAGE" --name img >/dev/null
"$LODE" pull img -o "$W/plain.img" >/dev/null
"$LODE" mount img "$MNT" --file-only --cache-dir "$W/cache" >/dev/null
FILE=$MNT/image
bytes4=$((COUNT * 4096))
big=$(( bytes4 / 131072 ))

# Prints the seconds dd took to read $3 blocks of size $2 from $1.
dd_secs() {
  dd if="$1" of=/dev/null bs="$2" count="$3" iflag=direct 2>&1 |
    awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") print $(i - 1) }'
}

# Warm pass: fetch every chunk the passes read into the worker's memory.
dd_secs "$FILE" 1M $(( (bytes4 >> 20) + 1 )) >/dev/null

declare -A t
for run in $(seq "$RUNS"); do
  for src in fuse plain; do
    f=$FILE; [[ $src == plain ]] && f=$W/plain.img
    t[$src,4k]+="$(dd_secs "$f" 4k "$COUNT") "
    t[$src,128k]+="$(dd_secs "$f" 128k "$big") "
  done
done
"$LODE" umount "$MNT" >/dev/null

median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "image $IMAGE, $COUNT reads of 4 KiB and $big of 128 KiB per pass, median of $RUNS passes, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| reads | FUSE file (chunks in memory) | plain file, O_DIRECT | FUSE per request | FUSE / plain |"
echo "|---|---:|---:|---:|---:|"
for bs in 4k 128k; do
  n=$COUNT; [[ $bs == 128k ]] && n=$big
  F=$(median "${t[fuse,$bs]}"); P=$(median "${t[plain,$bs]}")
  python3 -c "
f, p, n = $F, $P, $n
print(f'| {n} x $bs | {f:.3f} s | {p:.3f} s | {f / n * 1e6:.1f} µs | {f / p:.2f}x |')"
done
echo
echo "reproduce: sudo RUNS=$RUNS COUNT=$COUNT bench/fuse-reads.sh $CORPUS $IMAGE"
