#!/usr/bin/env bash
# Chunks a cold start fetches from an image laid out by a recorded profile,
# with and without the profile's inode entries (files listed only because
# their inodes were read in inode-table blocks, `"blocks": []`).
#
# 1. push IMAGE; record a profile on a lazy mount (kernel readahead 0) while
#    the start command runs;
# 2. push IMAGE-hot with that profile as layout, and IMAGE-base with the same
#    profile minus its block-less entries (the profile as it was before inode
#    entries: the baseline, in the same run);
# 3. RUNS times, for each: drop caches, mount with a fresh cache dir, no
#    prefetch, kernel readahead 0; run; unmount; count the chunks fetched
#    (files in the cache dir, and `chunks_fetched` of the mount's stats).
# Needs root (mount, chroot, drop_caches).
# Usage: bench/profile-inodes.sh [CORPUS] [IMAGE]   (defaults: $LODE_CORPUS or
# ../shared/corpus, python-app; START overrides the start command; RUNS=3;
# LODE_BIN uses that lode instead of building one)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
mount_bench_setup lode-pinodes "$@"

"$LODE" push "oci:$CORPUS/oci:$IMAGE" --name "$IMAGE" >/dev/null
"$LODE" mount "$IMAGE" "$MNT" --cache-dir "$W/c-record" --kernel-readahead-kb 0 \
  --record-profile "$W/profile.json" >/dev/null 2>"$W/record.log"
run_start
"$LODE" umount "$MNT" >/dev/null
python3 - "$W/profile.json" "$W/profile-base.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
f = p["files"]
print(f"profile: {len(f)} entries, {sum(1 for x in f if not x['blocks'])} without blocks, "
      f"unmapped_blocks {p['unmapped_blocks']}")
p["files"] = [x for x in f if x["blocks"]]
json.dump(p, open(sys.argv[2], "w"))
PY
"$LODE" push "oci:$CORPUS/oci:$IMAGE" --name "$IMAGE-hot" --layout-profile "$W/profile.json" >/dev/null
"$LODE" push "oci:$CORPUS/oci:$IMAGE" --name "$IMAGE-base" --layout-profile "$W/profile-base.json" >/dev/null

printf '%-22s %4s %8s %8s\n' image run chunks fetched
for r in $(seq 1 "$RUNS"); do
  for name in "$IMAGE-base" "$IMAGE-hot"; do
    c=$W/c-$name-$r
    drop_caches
    "$LODE" mount "$name" "$MNT" --cache-dir "$c" --kernel-readahead-kb 0 --no-prefetch \
      --stats "$W/stats.json" >/dev/null 2>>"$W/mount.log"
    run_start
    "$LODE" umount "$MNT" >/dev/null
    fetched=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["chunks_fetched"])' "$W/stats.json")
    printf '%-22s %4s %8s %8s\n' "$name" "$r" "$(find "$c" -type f | wc -l)" "$fetched"
  done
done
