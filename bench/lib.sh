# Shared by the bench scripts (source it from the repository root).

# Exits with "skipped: ..." unless every named command exists.
need_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "skipped: $t missing"; exit 0; }
  done
}

# Sets LODE to $LODE_BIN, or builds the release binary and uses that.
find_lode() {
  if [[ -n "${LODE_BIN:-}" ]]; then
    LODE=$(realpath "$LODE_BIN")
  else
    cargo build --release -q -p lode-cli
    LODE=$PWD/target/release/lode
  fi
}

# A fresh local store, keyring and salt under directory $1, for this script's
# lode commands (settings from the caller's environment are dropped).
fresh_store() {
  export LODE_STORE="file://$1/store" LODE_KMS="local:$1/k/keyring" LODE_SALTS="$1/k/salts"
  unset LODE_CONFIG LODE_CACHE_DIR LODE_L2 LODE_L2_SHARDS LODE_KERNEL_READAHEAD_KB || true
  "$LODE" keyring new "$1/k/keyring" >/dev/null
  "$LODE" salt new "$1/k/salts" >/dev/null
}

# Setup of a bench that mounts one corpus image and runs its start command:
# $1 names the work directory, then the script's arguments [CORPUS] [IMAGE].
# Sets CORPUS, IMAGE, START (default python3 /app/main.py), RUNS (default 3),
# LODE, W (work directory, removed on exit with whatever is mounted) and MNT.
mount_bench_setup() {
  local prefix=$1
  shift
  CORPUS=$(realpath "${1:-${LODE_CORPUS:-../shared/corpus}}")
  IMAGE=${2:-python-app}
  START=${START:-python3 /app/main.py}
  RUNS=${RUNS:-3}
  [[ $EUID -eq 0 ]] || { echo "skipped: needs root"; exit 0; }
  [[ -d $CORPUS/oci ]] || { echo "skipped: no OCI layout at $CORPUS/oci"; exit 0; }
  need_tools chroot mount python3
  find_lode
  W=$(mktemp -d "${TMPDIR:-/tmp}/$prefix.XXXXXX")
  MNT=$W/mnt
  trap mount_bench_cleanup EXIT
  fresh_store "$W"
  mkdir -p "$MNT"
}

mount_bench_cleanup() {
  umount -R -l "$MNT/proc" 2>/dev/null || true
  mountpoint -q "$MNT" && { "$LODE" umount "$MNT" >/dev/null 2>&1 || umount -l "$MNT" || true; }
  rm -rf "$W"
}

# Runs START chrooted in MNT (with /proc), from /app when it exists; its
# output goes to $W/start.out and is shown if it fails.
run_start() {
  mount --rbind /proc "$MNT/proc"
  chroot "$MNT" /bin/sh -c "cd /app 2>/dev/null; $START" >"$W/start.out" 2>&1 \
    || { umount -R "$MNT/proc"; cat "$W/start.out" >&2; exit 1; }
  umount -R "$MNT/proc"
}

# Empties the page cache, so reads come from the image as on a fresh worker.
drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}
