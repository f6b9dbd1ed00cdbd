#!/usr/bin/env bash
# Cold start of a container, seconds from nothing on this machine to the app's output:
#   a  full pull   copy every blob of the image out of the OCI layout (the "registry") to a
#                  fresh directory, `umoci raw unpack` the layers in order (whiteouts applied),
#                  chroot and run the app
#   b  lode, empty L1   fresh cache dir, page cache dropped; chunks in a local-directory store:
#                  `lode mount` (FUSE + loop + ext4) then chroot and run the app
#   c  lode, warm L1    the cache dir b left behind, page cache dropped
# With a lode that has `mount --store-latency` and `lode profile` (prefetch profiles), also:
#   d  lode, empty L1, store with STORE_LATENCY per fetch (default 20ms), no profile
#   e  the same after `lode mount --record-profile` + `lode profile save`: prefetch at mount
# With a lode that has `push --layout-profile`, the profile recorded for e also lays out
# IMAGE-hot (its start's blocks copied into one hot region; layer chunks unchanged):
#   f  lode, empty L1, local store, IMAGE-hot, no prefetch (the fetched share of a
#      profile-guided layout); its profile is recorded, and IMAGE-hot mounted, with
#      HOT_MOUNT_FLAGS (default --kernel-readahead-kb 0)
#   g  lode, empty L1, STORE_LATENCY store, IMAGE-hot with its own saved prefetch profile
# Each is the median of RUNS runs (default 3); runs of a/b/c interleave. Images are pushed
# once before timing. Needs root (chroot, mount, drop_caches), umoci, python3.
#
# Usage: bench/cold-start.sh [CORPUS]   (default: $LODE_CORPUS or ../shared/corpus)
# Env:   RUNS=3  IMAGES="python-app python-numpy"  LODE_BIN=path (else builds release)
#        LODE_MOUNT_FLAGS="..." extra `lode mount` flags for b, c, d, e
#        LODE_PUSH_FLAGS="..."  extra `lode push` flags (e.g. a layout option)
#        STORE_LATENCY=20ms  (d, e, g)   PROFILE_IMAGES="python-numpy python-app"
#        HOT_MOUNT_FLAGS="--kernel-readahead-kb 0"  (recording the layout profile, f, g)
#        PROFILE_RECORD_FLAGS="--record-profile"  PROFILE_SAVE_ARGS="profile save {name}"
#        ({name}: the image, {profile}: a file in the work dir; if `mount --help` shows
#        `--record-profile <...>` taking a value, the defaults pass {profile} to both)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
REPO=$PWD
CORPUS=$(realpath "${1:-${LODE_CORPUS:-../shared/corpus}}")
LAYOUT="$CORPUS/oci"
RUNS=${RUNS:-3}
IMAGES=${IMAGES:-python-app python-numpy}
PROFILE_IMAGES=${PROFILE_IMAGES:-$IMAGES}
LODE_MOUNT_FLAGS=${LODE_MOUNT_FLAGS:-}
LODE_PUSH_FLAGS=${LODE_PUSH_FLAGS:-}
STORE_LATENCY=${STORE_LATENCY:-20ms}
HOT_MOUNT_FLAGS=${HOT_MOUNT_FLAGS:---kernel-readahead-kb 0}

[[ $(id -u) == 0 ]] || { echo "skipped: needs root (chroot, mount, drop_caches)"; exit 0; }
[[ -d $LAYOUT ]] || { echo "skipped: no OCI layout at $LAYOUT (set LODE_CORPUS)"; exit 0; }
need_tools umoci chroot python3 mount

find_lode

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lode-cold.XXXXXX")
cleanup() {
  # Timed steps run in subshells, so look for what may still be mounted.
  for m in "$WORK"/mnt-* "$WORK/rootfs"; do
    [[ -d $m ]] || continue
    umount -R -l "$m/proc" "$m/dev" 2>/dev/null || true
    mountpoint -q "$m" && { "$LODE" umount "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true; }
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

fresh_store "$WORK"

# Dropping the page cache makes every run read its input from disk, as on a fresh worker.
DROP=yes
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || DROP=no
drop_caches() {
  sync
  if [[ $DROP == yes ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

# The command that starts each image and what its output must contain.
app_cmd() {
  case $1 in
    python-app) echo 'python3 /app/main.py' ;;
    python-numpy) echo "python3 -c 'import numpy; print(numpy.arange(10).sum())'" ;;
    *) echo "no app command for image $1" >&2; exit 1 ;;
  esac
}
app_expect() {
  case $1 in
    python-app) echo 'OK' ;;
    python-numpy) echo '45' ;;
  esac
}

# Runs the app of image $1 chrooted in $2 (with /proc and /dev bound), checks its output.
run_app() {
  local img=$1 root=$2 out rc=0
  mount --rbind /proc "$root/proc"
  mount --rbind /dev "$root/dev"
  out=$(chroot "$root" /bin/sh -c "$(app_cmd "$img")" 2>&1) || rc=$?
  umount -R -l "$root/proc" "$root/dev"
  if [[ $rc != 0 || $out != *"$(app_expect "$img")"* ]]; then
    echo "error: $img in $root: exit $rc, output: $out" >&2
    exit 1
  fi
}

# The blobs a pull of image $1 fetches (manifest, config, layers), one path a line, and the
# index.json of a layout holding just that image: resolved once, outside the timing.
pull_plan() {
  local img=$1
  python3 - "$LAYOUT" "$img" "$WORK/plan-$img" <<'PY'
import json, os, sys
src, tag, out = sys.argv[1:]
os.makedirs(out, exist_ok=True)
idx = json.load(open(f"{src}/index.json"))
desc = [m for m in idx["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag][0]
man = json.load(open(f"{src}/blobs/sha256/{desc['digest'][7:]}"))
digests = [desc["digest"], man["config"]["digest"]] + [l["digest"] for l in man["layers"]]
paths = [f"{src}/blobs/sha256/{d[7:]}" for d in digests]
open(f"{out}/blobs", "w").write("\n".join(paths) + "\n")
open(f"{out}/bytes", "w").write(str(sum(os.path.getsize(p) for p in paths)))
json.dump({"schemaVersion": 2, "manifests": [desc]}, open(f"{out}/index.json", "w"))
PY
}

# a: the full pull. Everything from the first blob copy to the app's output is timed.
full_pull() {
  local img=$1 dst="$WORK/pulled" plan="$WORK/plan-$img" t0 t1
  rm -rf "$dst" "$WORK/rootfs"
  drop_caches
  t0=$EPOCHREALTIME
  mkdir -p "$dst/blobs/sha256"
  xargs -a "$plan/blobs" cp -t "$dst/blobs/sha256"
  cp "$plan/index.json" "$LAYOUT/oci-layout" "$dst/"
  umoci raw unpack --image "$dst:$img" "$WORK/rootfs" >"$WORK/umoci.log" 2>&1 \
    || { cat "$WORK/umoci.log" >&2; exit 1; }
  run_app "$img" "$WORK/rootfs"
  t1=$EPOCHREALTIME
  rm -rf "$dst" "$WORK/rootfs"
  echo "$t1 $t0" | awk '{printf "%.3f", $1 - $2}'
}

# Mounts image $1 with cache dir $2 and extra flags, runs the app, unmounts.
# Prints "seconds stats-file mount-seconds"; the stats JSON is written at unmount.
lode_run() {
  local img=$1 cache=$2; shift 2
  local mnt="$WORK/mnt-$img" stats="$WORK/stats-$img-$RANDOM.json" t0 tm t1
  local name=${RUN_NAME:-$img}
  mkdir -p "$mnt"
  drop_caches
  t0=$EPOCHREALTIME
  "$LODE" mount "$name" "$mnt" --cache-dir "$cache" --stats "$stats" \
    --log-file "$WORK/mount-$img.log" "$@" >/dev/null 2>>"$WORK/mount-$img.log" \
    || { tail -n 20 "$WORK/mount-$img.log" >&2; exit 1; }
  tm=$EPOCHREALTIME
  run_app "$img" "$mnt"
  t1=$EPOCHREALTIME
  "$LODE" umount "$mnt" >/dev/null
  echo "$(echo "$t1 $t0" | awk '{printf "%.3f", $1 - $2}') $stats $(echo "$tm $t0" | awk '{printf "%.3f", $1 - $2}')"
}

# Results: one line per run, "image mode seconds stats-file mount-seconds" (for a: the
# file with the bytes copied, and "-").
RESULTS="$WORK/results"
: >"$RESULTS"
for img in $IMAGES; do
  # shellcheck disable=SC2086
  "$LODE" push "oci:$LAYOUT:$img" --name "$img" --json $LODE_PUSH_FLAGS >"$WORK/push-$img.json"
  pull_plan "$img"
done

# shellcheck disable=SC2206
MOUNT_FLAGS=($LODE_MOUNT_FLAGS)
# shellcheck disable=SC2206
HOT_FLAGS=($HOT_MOUNT_FLAGS)
for run in $(seq "$RUNS"); do
  for img in $IMAGES; do
    # (Assignments, so that a failing step stops the script under set -e.)
    r=$(full_pull "$img"); echo "$img a $r $WORK/plan-$img/bytes -" >>"$RESULTS"
    rm -rf "$WORK/cache-$img"
    r=$(lode_run "$img" "$WORK/cache-$img" "${MOUNT_FLAGS[@]}"); echo "$img b $r" >>"$RESULTS"
    r=$(lode_run "$img" "$WORK/cache-$img" "${MOUNT_FLAGS[@]}"); echo "$img c $r" >>"$RESULTS"
  done
done

# d, e: store latency and prefetch profiles, when this lode has them.
PROFILES=no
if "$LODE" mount --help 2>/dev/null | grep -q -- --store-latency \
  && "$LODE" profile --help >/dev/null 2>&1; then
  PROFILES=yes
  LAT=(--store-latency "$STORE_LATENCY")
  if "$LODE" mount --help | grep -q -- '--record-profile <'; then
    PROFILE_RECORD_FLAGS=${PROFILE_RECORD_FLAGS:---record-profile \{profile\}}
    PROFILE_SAVE_ARGS=${PROFILE_SAVE_ARGS:-profile save \{name\} \{profile\}}
  else
    PROFILE_RECORD_FLAGS=${PROFILE_RECORD_FLAGS:---record-profile}
    PROFILE_SAVE_ARGS=${PROFILE_SAVE_ARGS:-profile save \{name\}}
  fi
  for img in $PROFILE_IMAGES; do
    for run in $(seq "$RUNS"); do
      rm -rf "$WORK/cache-d-$img"
      r=$(lode_run "$img" "$WORK/cache-d-$img" "${LAT[@]}" "${MOUNT_FLAGS[@]}"); echo "$img d $r" >>"$RESULTS"
    done
    # Record a profile in one more cold mount, then save it beside the manifest.
    rm -rf "$WORK/cache-rec-$img"
    # shellcheck disable=SC2206
    rec=(${PROFILE_RECORD_FLAGS//\{profile\}/$WORK/profile-$img})
    r=$(lode_run "$img" "$WORK/cache-rec-$img" "${LAT[@]}" "${rec[@]}" "${MOUNT_FLAGS[@]}")
    # shellcheck disable=SC2206
    save=${PROFILE_SAVE_ARGS//\{name\}/$img}
    # shellcheck disable=SC2206
    save=(${save//\{profile\}/$WORK/profile-$img})
    "$LODE" "${save[@]}" >/dev/null
    for run in $(seq "$RUNS"); do
      rm -rf "$WORK/cache-e-$img"
      r=$(lode_run "$img" "$WORK/cache-e-$img" "${LAT[@]}" "${MOUNT_FLAGS[@]}"); echo "$img e $r" >>"$RESULTS"
    done
    "$LODE" push --help | grep -q -- --layout-profile || continue
    # f, g: the image laid out by a profile (pushed as IMAGE-hot). The profile for the
    # layout is recorded with HOT_MOUNT_FLAGS (kernel readahead 0: exactly the blocks
    # the start reads), and IMAGE-hot is mounted with them too.
    rm -rf "$WORK/cache-rec-$img"
    # shellcheck disable=SC2206
    rec=(${PROFILE_RECORD_FLAGS//\{profile\}/$WORK/layout-$img})
    r=$(lode_run "$img" "$WORK/cache-rec-$img" "${rec[@]}" "${HOT_FLAGS[@]}" "${MOUNT_FLAGS[@]}")
    # shellcheck disable=SC2086
    "$LODE" push "oci:$LAYOUT:$img" --name "$img-hot" --json --layout-profile "$WORK/layout-$img" \
      $LODE_PUSH_FLAGS >"$WORK/push-$img-hot.json"
    for run in $(seq "$RUNS"); do
      rm -rf "$WORK/cache-f-$img"
      r=$(RUN_NAME="$img-hot" lode_run "$img" "$WORK/cache-f-$img" --no-prefetch "${HOT_FLAGS[@]}" "${MOUNT_FLAGS[@]}")
      echo "$img f $r" >>"$RESULTS"
    done
    rm -rf "$WORK/cache-rec-$img"
    # shellcheck disable=SC2206
    rec=(${PROFILE_RECORD_FLAGS//\{profile\}/$WORK/profile-$img-hot})
    r=$(RUN_NAME="$img-hot" lode_run "$img" "$WORK/cache-rec-$img" "${LAT[@]}" "${rec[@]}" "${HOT_FLAGS[@]}" "${MOUNT_FLAGS[@]}")
    save=${PROFILE_SAVE_ARGS//\{name\}/$img-hot}
    # shellcheck disable=SC2206
    save=(${save//\{profile\}/$WORK/profile-$img-hot})
    "$LODE" "${save[@]}" >/dev/null
    for run in $(seq "$RUNS"); do
      rm -rf "$WORK/cache-g-$img"
      r=$(RUN_NAME="$img-hot" lode_run "$img" "$WORK/cache-g-$img" "${LAT[@]}" "${HOT_FLAGS[@]}" "${MOUNT_FLAGS[@]}")
      echo "$img g $r" >>"$RESULTS"
    done
  done
fi

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$RESULTS" "$RUNS" "$DROP" "$PROFILES" "$STORE_LATENCY" "$LOAD" "$WORK" <<'PY'
import json, os, statistics, sys
results, runs, drop, profiles, latency, load, work = sys.argv[1:]
rows = {}
for line in open(results):
    img, mode, secs, stats, mount_secs = line.split()
    rows.setdefault((img, mode), []).append((float(secs), stats, mount_secs))
names = {
    "a": "full pull: copy blobs, umoci unpack, run",
    "b": "lode, empty L1, local store",
    "c": "lode, warm L1",
    "d": f"lode, empty L1, {latency} store, no profile",
    "e": f"lode, empty L1, {latency} store, prefetch profile",
    "f": "lode, empty L1, local store, profile-guided layout",
    "g": f"lode, empty L1, {latency} store, profile-guided layout + prefetch profile",
}
def plain_size(img):
    return json.load(open(f"{work}/push-{img}.json"))["image_bytes"]
print(f"median of {runs} runs; page cache dropped before each: {drop}; load average {load}")
print()
print("| image | mode | seconds (median) | seconds per run | of which `lode mount` | bytes fetched from L3 | share of image | share of the plain image | chunks from L3 | chunks from L1 |")
print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
med = {}
for (img, mode), rs in sorted(rows.items()):
    secs = [r[0] for r in rs]
    m = statistics.median(secs)
    med[(img, mode)] = m
    per_run = " ".join(f"{s:.2f}" for s in secs)
    median_run = sorted(rs)[(len(rs) - 1) // 2]
    if mode == "a":
        copied = int(open(median_run[1]).read())
        print(f"| {img} | a: {names[mode]} | {m:.2f} | {per_run} | | {copied:,} (every blob, compressed) | all layers | | | |")
        continue
    # The counters of the median run.
    stats = json.load(open(median_run[1]))
    tiers = stats.get("tiers", {})
    l3 = tiers.get("store", {"bytes": 0, "chunks": 0})
    l1 = sum(v.get("chunks", 0) for k, v in tiers.items() if k != "store")
    share = l3["bytes"] / stats["image_size"]
    # A profile-guided image is larger (its hot copies); also compare with the plain one.
    plain = l3["bytes"] / plain_size(img)
    print(f"| {img} | {mode}: {names[mode]} | {m:.2f} | {per_run} | {median_run[2]} | {l3['bytes']:,} | {share:.1%} | {plain:.1%} | {l3['chunks']} | {l1} |")
print()
print("| image | ratio | value |")
print("|---|---|---:|")
for img in sorted({i for i, _ in rows}):
    def ratio(x, y, label):
        if (img, x) in med and (img, y) in med and med[(img, y)] > 0:
            print(f"| {img} | {label} | {med[(img, x)] / med[(img, y)]:.2f}x |")
    ratio("a", "b", "a / b (full pull / lode cold)")
    ratio("a", "c", "a / c (full pull / lode warm L1)")
    ratio("b", "c", "b / c (cold / warm L1)")
    ratio("d", "e", "d / e (no profile / profile)")
    ratio("a", "f", "a / f (full pull / lode cold, profile-guided layout)")
    ratio("d", "g", "d / g (no profile / layout + prefetch profile)")
if profiles == "no":
    print()
    print("rows d, e skipped: this lode has no `mount --store-latency` or `lode profile`")
PY
echo
extra=""
[[ $PROFILES == yes ]] && extra=" STORE_LATENCY=$STORE_LATENCY PROFILE_IMAGES=\"$PROFILE_IMAGES\" HOT_MOUNT_FLAGS=\"$HOT_MOUNT_FLAGS\""
echo "reproduce: sudo RUNS=$RUNS IMAGES=\"$IMAGES\" LODE_MOUNT_FLAGS=\"$LODE_MOUNT_FLAGS\" LODE_PUSH_FLAGS=\"$LODE_PUSH_FLAGS\"$extra bench/cold-start.sh $CORPUS"
