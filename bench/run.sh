#!/usr/bin/env bash
# `lode run` start time: seconds from the command to the app's first line of output.
#   a  full pull: copy the image's blobs out of the OCI layout (the "registry"), `umoci raw
#      unpack` them, then run the app with the OCI runtime (crun or runc) on that rootfs
#   b  `lode run`, empty L1 (fresh cache dir), chunks in a local-directory store
#   c  `lode run`, warm L1 (the cache dir b left behind)
#   d  ten concurrent `lode run` of one image, empty L1: seconds until all ten printed, and
#      chunks fetched (files in the shared L1) against the distinct chunks one run fetches (b)
# Page cache dropped before each run; medians of RUNS (default 5); load average printed.
# The runtime is the one `lode run` picks (crun, or runc where crun cannot run: a hybrid
# cgroup host); RUNTIME=path overrides both.
#
# Usage: bench/run.sh [CORPUS]   (default: $LODE_CORPUS or ../shared/corpus)
# Env:   RUNS=5  IMAGES="python-app python-numpy"  LODE_BIN=path (else builds release)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
CORPUS=$(realpath "${1:-${LODE_CORPUS:-../shared/corpus}}")
LAYOUT="$CORPUS/oci"
RUNS=${RUNS:-5}
IMAGES=${IMAGES:-python-app python-numpy}

[[ $(id -u) == 0 ]] || { echo "skipped: needs root"; exit 0; }
[[ -d $LAYOUT ]] || { echo "skipped: no OCI layout at $LAYOUT (set LODE_CORPUS)"; exit 0; }
need_tools umoci python3 mount
if [[ -z ${RUNTIME:-} ]]; then
  if [[ -d /sys/fs/cgroup/unified ]]; then order="runc crun"; else order="crun runc"; fi
  for r in $order; do RUNTIME=$(command -v "$r" || true); [[ -n $RUNTIME ]] && break; done
fi
[[ -n ${RUNTIME:-} ]] || { echo "skipped: needs crun or runc"; exit 0; }
find_lode

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lode-run-bench.XXXXXX")
STATE=$WORK/state
cleanup() {
  for m in "$STATE"/images/*/rootfs; do
    [[ -d $m ]] && mountpoint -q "$m" && "$LODE" umount "$m" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
fresh_store "$WORK"

app_cmd() {
  case $1 in
    python-app) echo 'cd /app 2>/dev/null; python3 /app/main.py' ;;
    python-numpy) echo "python3 -c 'import numpy; print(numpy.arange(10).sum())'" ;;
  esac
}
app_out() {
  case $1 in python-app) echo OK ;; python-numpy) echo 45 ;; esac
}

# Runs "$@" and prints the seconds until its first line of stdout; its whole output must
# contain $EXPECT (python-app prints its versions, then OK).
first_line() {
  local t0 t1 line rest pid
  t0=$EPOCHREALTIME
  exec 3< <("$@" 2>>"$WORK/err.log")
  pid=$!
  IFS= read -r line <&3 || true
  t1=$EPOCHREALTIME
  rest=$(cat <&3)
  exec 3<&-
  wait "$pid" || true
  [[ "$line"$'\n'"$rest" == *"$EXPECT"* ]] || { echo "unexpected output ${line@Q} ${rest@Q} from $*" >&2; tail -n 20 "$WORK/err.log" >&2; exit 1; }
  echo "$t1 $t0" | awk '{printf "%.3f", $1 - $2}'
}

# a: blobs copied and unpacked, then the runtime on the unpacked rootfs.
full_pull() {
  local img=$1 dst=$WORK/pulled b=$WORK/bundle
  rm -rf "$dst" "$b"
  mkdir -p "$dst/blobs/sha256" "$b"
  python3 - "$LAYOUT" "$img" "$dst" "$b" "$(app_cmd "$img")" <<'PY'
import json, os, sys
src, tag, dst, bundle, cmd = sys.argv[1:]
idx = json.load(open(f"{src}/index.json"))
desc = [m for m in idx["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag][0]
man = json.load(open(f"{src}/blobs/sha256/{desc['digest'][7:]}"))
digests = [desc["digest"], man["config"]["digest"]] + [l["digest"] for l in man["layers"]]
open(f"{dst}/../blobs.txt", "w").write("\n".join(f"{src}/blobs/sha256/{d[7:]}" for d in digests) + "\n")
json.dump({"schemaVersion": 2, "manifests": [desc]}, open(f"{dst}/../index.json", "w"))
PY
  "$RUNTIME" spec --bundle "$b" 2>/dev/null || (cd "$b" && "$RUNTIME" spec)
  python3 - "$b/config.json" "$(app_cmd "$img")" <<'PY'
import json, sys
p, cmd = sys.argv[1:]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/sh", "-c", cmd]
c["root"] = {"path": "rootfs", "readonly": False}
json.dump(c, open(p, "w"))
PY
  sync; echo 3 >/proc/sys/vm/drop_caches
  pull_and_run() {
    xargs -a "$WORK/blobs.txt" cp -t "$dst/blobs/sha256"
    cp "$WORK/index.json" "$LAYOUT/oci-layout" "$dst/"
    umoci raw unpack --image "$dst:$img" "$b/rootfs" >"$WORK/umoci.log" 2>&1 || { cat "$WORK/umoci.log" >&2; return 1; }
    "$RUNTIME" run --bundle "$b" "bench-$img-$$"
  }
  EXPECT=$(app_out "$img") first_line pull_and_run
  "$RUNTIME" delete -f "bench-$img-$$" >/dev/null 2>&1 || true
  rm -rf "$dst" "$b"
}

lode_run() {
  local img=$1 cache=$2
  sync; echo 3 >/proc/sys/vm/drop_caches
  EXPECT=$(app_out "$img") first_line \
    env LODE_CACHE_DIR="$cache" "$LODE" run --state-dir "$STATE" --runtime "$RUNTIME" "$img" -- /bin/sh -c "$(app_cmd "$img")"
}

# d: ten at once; seconds until the last one printed its first line.
ten() {
  local img=$1 cache=$2 t0 t1 i
  sync; echo 3 >/proc/sys/vm/drop_caches
  t0=$EPOCHREALTIME
  for i in $(seq 10); do
    (EXPECT=$(app_out "$img") first_line env LODE_CACHE_DIR="$cache" "$LODE" run --state-dir "$STATE" \
      --runtime "$RUNTIME" "$img" -- /bin/sh -c "$(app_cmd "$img")" >/dev/null) &
  done
  wait
  t1=$EPOCHREALTIME
  echo "$t1 $t0" | awk '{printf "%.3f", $1 - $2}'
}

chunks_in() { find "$1" -type f -not -path "$1/tmp/*" | wc -l; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "# $0 $*   (RUNS=$RUNS, runtime $RUNTIME, lode $LODE)"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for img in $IMAGES; do
  "$LODE" push "oci:$LAYOUT:$img" --name "$img" >/dev/null
done
printf '%-14s %8s %8s %8s %8s %10s %10s\n' image a_pull b_empty c_warm d_ten10 d_chunks b_chunks
for img in $IMAGES; do
  : >"$WORK/a" ; : >"$WORK/b"; : >"$WORK/c"; : >"$WORK/d"
  for run in $(seq "$RUNS"); do
    full_pull "$img" >>"$WORK/a"; echo >>"$WORK/a"
    cache=$WORK/cache-$img-$run
    lode_run "$img" "$cache" >>"$WORK/b"; echo >>"$WORK/b"
    bchunks=$(chunks_in "$cache")
    lode_run "$img" "$cache" >>"$WORK/c"; echo >>"$WORK/c"
    rm -rf "$cache"
    cache=$WORK/cache10-$img-$run
    ten "$img" "$cache" >>"$WORK/d"; echo >>"$WORK/d"
    dchunks=$(chunks_in "$cache")
    rm -rf "$cache"
  done
  printf '%-14s %8s %8s %8s %8s %10s %10s\n' "$img" \
    "$(grep . "$WORK/a" | median)" "$(grep . "$WORK/b" | median)" "$(grep . "$WORK/c" | median)" \
    "$(grep . "$WORK/d" | median)" "$dchunks" "$bchunks"
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# seconds (medians); d_chunks: chunk files in the L1 the ten runs shared (last round),"
echo "# b_chunks: the same for one run (last round): equal when each chunk was fetched once"
