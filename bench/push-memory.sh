#!/usr/bin/env bash
# Peak memory of `lode push` against image size: it must stay flat (the flattener
# spools file data to disk, chunks stream through bounded queues, uploads are
# bounded), so a 10 GiB image needs no more RAM than a 1 GiB one.
#
# For each size: an OCI image with one uncompressed layer holding one file of
# incompressible bytes (AES-CTR keystream from openssl), pushed into a fresh
# local-directory store; prints seconds, peak RSS (GNU time) and MB/s.
# Needs: openssl, tar, python3, /usr/bin/time; free disk of about 3x the largest size.
#
# Usage: bench/push-memory.sh            Env: SIZES="1G 4G" (head -c sizes), LODE_BIN
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SIZES=${SIZES:-1G 4G}
need_tools openssl tar python3 /usr/bin/time
find_lode
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lode-pushmem.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fresh_store "$WORK"

# One-layer OCI layout at $1 with the uncompressed layer tar $2, tag "big".
oci_layout() {
  python3 - "$1" "$2" <<'PY'
import hashlib, json, os, shutil, sys
out, layer = sys.argv[1:]
blobs = f"{out}/blobs/sha256"
os.makedirs(blobs, exist_ok=True)
h = hashlib.sha256()
with open(layer, "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b)
ld, ls = h.hexdigest(), os.path.getsize(layer)
shutil.move(layer, f"{blobs}/{ld}")
def blob(obj):
    data = json.dumps(obj).encode()
    d = hashlib.sha256(data).hexdigest()
    open(f"{blobs}/{d}", "wb").write(data)
    return d, len(data)
cd, cs = blob({"architecture": "amd64", "os": "linux",
               "rootfs": {"type": "layers", "diff_ids": [f"sha256:{ld}"]}})
md, ms = blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{cd}", "size": cs},
               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{ld}", "size": ls}]})
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": f"sha256:{md}", "size": ms, "annotations": {"org.opencontainers.image.ref.name": "big"}}]},
          open(f"{out}/index.json", "w"))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
}

echo "| file in the image | image bytes | push seconds | MB/s | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|"
for size in $SIZES; do
  rm -rf "$WORK/rootfs" "$WORK/oci" "$WORK/store"
  mkdir -p "$WORK/rootfs"
  # (openssl ends by SIGPIPE when head has enough.)
  { openssl enc -aes-128-ctr -nosalt -pass pass:lode -pbkdf2 </dev/zero 2>/dev/null || true; } \
    | head -c "$size" >"$WORK/rootfs/big.bin"
  tar -C "$WORK/rootfs" -cf "$WORK/layer.tar" big.bin
  rm -rf "$WORK/rootfs"
  oci_layout "$WORK/oci" "$WORK/layer.tar"
  sync
  /usr/bin/time -f "%e %M" -o "$WORK/time" \
    "$LODE" push "oci:$WORK/oci:big" --name "big-$size" --json >"$WORK/push.json"
  read -r secs rss_kib <"$WORK/time"
  python3 - "$WORK/push.json" "$secs" "$rss_kib" "$size" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
secs, rss, size = float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print(f"| {size} | {s['image_bytes']:,} | {secs:.1f} | {s['image_bytes'] / secs / 1e6:.0f} | {rss / 1024:.0f} |")
PY
done
echo
echo "reproduce: SIZES=\"$SIZES\" bench/push-memory.sh"
