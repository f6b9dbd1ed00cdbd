#!/usr/bin/env bash
# The main job, end to end, on an embedded default (local directory store,
# local keyring): build a small real image, push it, mount it lazily, run a
# program inside, unmount, and report what was fetched.
# Usage: ./scripts/demo.sh   (as root on Debian; installs what it needs)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release -q -p lode-cli
lode=$PWD/target/release/lode

demo=$(mktemp -d /tmp/lode-demo.XXXXXX)
mnt=$demo/mnt
cleanup() { "$lode" umount "$mnt" 2>/dev/null || true; rm -rf "$demo"; }
trap cleanup EXIT

image=$(./examples/make-busybox-image.sh "$demo/oci")
"$lode" keyring new "$demo/k/keyring"
"$lode" salt new "$demo/k/salts"
export LODE_STORE=file://$demo/store LODE_KMS=local:$demo/k/keyring LODE_SALTS=$demo/k/salts

echo "== push $image"
"$lode" push "$image" --name demo
echo "== mount (returns once mounted)"
mkdir -p "$mnt"
"$lode" mount demo "$mnt" --cache-dir "$demo/cache" --stats "$demo/stats.json"
echo "== run /app/hello.sh inside the lazily loaded image"
chroot "$mnt" /app/hello.sh
"$lode" umount "$mnt"

echo "== what the worker fetched"
python3 - "$demo/stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"fetched {s['distinct_chunks_fetched']} of {s['chunks_total']} chunks: "
      f"{s['bytes_fetched']} bytes (ciphertext, 16-byte tag per chunk) for an image of "
      f"{s['image_size']} bytes, {100 * s['bytes_fetched'] / s['image_size']:.1f}%")
PY
