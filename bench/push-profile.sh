#!/usr/bin/env bash
# What a plain `lode mount` (no readahead flag) fetches from an image pushed
# with --layout-profile, now that the push stores a prefetch profile with the
# kernel readahead hint 0:
# 1. push IMAGE; record a profile on a lazy mount (kernel readahead 0) while
#    the start command runs; push IMAGE-hot with it as layout (which stores
#    profiles/IMAGE-hot);
# 2. RUNS times, drop caches, fresh cache dir, then run the start under:
#      hint      no flag, --no-prefetch      (readahead from the stored hint: 0)
#      ra128     --kernel-readahead-kb 128 --no-prefetch  (what the old default did)
#      prefetch  no flag, prefetch on        (the stored profile's chunks + reads)
#    and count the chunks fetched (`chunks_fetched` of the mount's stats) and
#    the loop device's read_ahead_kb.
# Needs root (mount, chroot, drop_caches).
# Usage: bench/push-profile.sh [CORPUS] [IMAGE]   (defaults: $LODE_CORPUS or
# ../shared/corpus, python-app; START overrides the start command; RUNS=3;
# LODE_BIN uses that lode instead of building one)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
mount_bench_setup lode-pushprof "$@"

read_ahead_kb() {
  local dev
  dev=$(awk -v m="$MNT" '$2 == m && $1 ~ /^\/dev\/loop/ {print $1}' /proc/mounts)
  cat "/sys/block/${dev#/dev/}/queue/read_ahead_kb"
}

"$LODE" push "oci:$CORPUS/oci:$IMAGE" --name "$IMAGE" >/dev/null
"$LODE" mount "$IMAGE" "$MNT" --cache-dir "$W/c-record" --kernel-readahead-kb 0 \
  --no-prefetch --record-profile "$W/profile.json" >/dev/null
run_start
"$LODE" umount "$MNT" >/dev/null
"$LODE" push "oci:$CORPUS/oci:$IMAGE" --name "$IMAGE-hot" --layout-profile "$W/profile.json" \
  --json >"$W/push.json"
python3 -c 'import json,sys; print("stored profile:", json.load(open(sys.argv[1]))["prefetch_profile_chunks"], "chunks")' "$W/push.json"

printf '%-9s %4s %13s %8s %8s\n' mode run read_ahead_kb fetched prefetch
for r in $(seq 1 "$RUNS"); do
  for mode in hint ra128 prefetch; do
    case $mode in
      hint) flags=(--no-prefetch) ;;
      ra128) flags=(--no-prefetch --kernel-readahead-kb 128) ;;
      prefetch) flags=() ;;
    esac
    c=$W/c-$mode-$r
    drop_caches
    "$LODE" mount "$IMAGE-hot" "$MNT" --cache-dir "$c" "${flags[@]}" \
      --stats "$W/stats.json" >/dev/null 2>>"$W/mount.log"
    ra=$(read_ahead_kb)
    run_start
    "$LODE" umount "$MNT" >/dev/null
    read -r fetched pf < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["chunks_fetched"], (s.get("prefetch") or {}).get("fetched", 0))' "$W/stats.json")
    printf '%-9s %4s %13s %8s %8s\n' "$mode" "$r" "$ra" "$fetched" "$pf"
  done
done
