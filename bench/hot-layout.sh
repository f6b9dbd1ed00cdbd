#!/usr/bin/env bash
# Cold start of a corpus image with and without a profile-guided hot region.
#
# 1. flatten the image without a hot list; loop-mount it read-only (fresh loop
#    device: nothing cached) and run its start command in a chroot while a
#    private ftrace instance records every read request the loop device gets
#    (block:block_rq_issue: sector and length, in order);
# 2. profile: the same start on the plain image mounted with
#    inode_readahead_blks=0 (so each inode-table block read is one the start
#    needed); map the blocks read to (path, logical block) with FIEMAP on
#    that mount, and inode-table blocks to the paths of their inodes, and
#    flatten again with that HotList (`flattener/examples/hot_trace.rs`):
#    hot blocks copied to the hot region, hot inodes numbered first;
# 3. run the same start on the new image, recorded as in 1;
# 4. print, for both, the 512 KiB chunks touched (what a lazy worker fetches)
#    out of the image's chunks, and check that both runs printed the same.
# Needs root, tracefs, losetup, chroot.
# Usage: bench/hot-layout.sh [CORPUS] [IMAGE]   (defaults: $LODE_CORPUS or
# ../shared/corpus, python-app; START overrides the start command, run in /app;
# RA=N sets the loop device's readahead to N sectors, default: the kernel's)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-${LODE_CORPUS:-../shared/corpus}}
IMAGE=${2:-python-app}
START=${START:-python3 /app/main.py}
TRACING=/sys/kernel/tracing
[[ $EUID -eq 0 ]] || { echo "skipped: needs root"; exit 0; }
[[ -d $TRACING/instances ]] || { echo "skipped: no tracefs at $TRACING"; exit 0; }
for t in losetup chroot mount; do
  command -v "$t" >/dev/null || { echo "skipped: $t missing"; exit 0; }
done

cargo build --release -q -p lode-flattener --example hot_trace
X=target/release/examples/hot_trace
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lode-hot.XXXXXX")
INST=$TRACING/instances/lode-hot-$$
DEV=""
cleanup() {
  mountpoint -q "$WORK/mnt" 2>/dev/null && umount "$WORK/mnt"
  [[ -n $DEV ]] && losetup -d "$DEV" 2>/dev/null
  [[ -d $INST ]] && rmdir "$INST"
  if [[ -n ${KEEP:-} ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
mkdir "$INST" "$WORK/mnt"
echo 8192 > "$INST/buffer_size_kb"

# record IMAGE TRACE [MOUNT_OPTIONS]: cold mount + start, reads recorded;
# leaves IMAGE mounted.
record() {
  DEV=$(losetup -f --show -r "$1")
  [[ -n ${RA:-} ]] && blockdev --setra "$RA" "$DEV"
  local majmin
  majmin=$(cat "/sys/block/${DEV#/dev/}/dev")
  echo 0 > "$INST/tracing_on"
  echo > "$INST/trace"
  echo "dev == $(( (${majmin%:*} << 20) | ${majmin#*:} ))" > "$INST/events/block/block_rq_issue/filter"
  echo 1 > "$INST/events/block/block_rq_issue/enable"
  echo 1 > "$INST/tracing_on"
  mount -t ext4 -o "${3:-ro}" "$DEV" "$WORK/mnt"
  chroot "$WORK/mnt" /bin/sh -c "cd /app 2>/dev/null || cd /; exec env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 HOME=/root $START" > "$2.out" 2>&1 \
    || { echo "start failed:"; cat "$2.out"; exit 1; }
  echo 0 > "$INST/tracing_on"
  echo 0 > "$INST/events/block/block_rq_issue/enable"
  # "... block_rq_issue: 7,3 R 4096 () 270336 + 8 none,0,0 [python3]" -> "270336 8"
  awk '/block_rq_issue:/ { for (i = 1; i <= NF; i++) if ($i == "+" && $(i-4) ~ /R/) print $(i-1), $(i+1) }' \
    "$INST/trace" > "$2"
}
release() {
  umount "$WORK/mnt"
  losetup -d "$DEV"
  DEV=""
}

REF="oci:$CORPUS/oci:$IMAGE"
$X plain "$REF" "$WORK/plain.ext4"
record "$WORK/plain.ext4" "$WORK/plain.trace"
release
record "$WORK/plain.ext4" "$WORK/profile.trace" ro,inode_readahead_blks=0
$X hot "$REF" "$WORK/plain.ext4" "$WORK/mnt" "$WORK/profile.trace" "$WORK/hot.ext4"
release
record "$WORK/hot.ext4" "$WORK/hot.trace"
release
for t in profile hot; do
  cmp -s "$WORK/plain.trace.out" "$WORK/$t.trace.out" || {
    echo "the start printed different output on the $t run"; exit 1; }
done

echo
echo "$IMAGE, start: $START (output identical on both images), loop readahead ${RA:-default} sectors"
echo
echo "| layout | chunks touched | image chunks | share | 4 KiB blocks read | MiB read |"
echo "|---|---:|---:|---:|---:|---:|"
for l in plain hot; do
  read -r touched total blocks mib share < <($X count "$WORK/$l.ext4" "$WORK/$l.trace")
  echo "| $l | $touched | $total | $share% | $blocks | $mib |"
done
