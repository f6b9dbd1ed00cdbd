#!/usr/bin/env bash
# Builds a small, real, two-layer OCI image layout from Debian's busybox-static:
#   layer 1: /bin/busybox plus its applet symlinks, /etc/passwd, /tmp
#   layer 2: /app/hello.sh and a whiteout of /etc/motd (from layer 1)
# Usage: make-busybox-image.sh OUT_DIR   -> image "oci:OUT_DIR:demo"
# Deterministic: the same busybox gives the same blobs.
set -euo pipefail
out=${1:?usage: make-busybox-image.sh OUT_DIR}
busybox=$(command -v busybox || true)
[[ -x /bin/busybox ]] && busybox=/bin/busybox
[[ -n "$busybox" ]] || { echo "busybox not found (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$out/blobs/sha256" "$work/l1/bin" "$work/l1/etc" "$work/l1/tmp" "$work/l2/app" "$work/l2/etc"
cp "$busybox" "$work/l1/bin/busybox"
for applet in sh ls cat echo uname wc sha256sum head mkdir; do ln -s busybox "$work/l1/bin/$applet"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$work/l1/etc/passwd"
printf 'welcome\n' > "$work/l1/etc/motd"
chmod 1777 "$work/l1/tmp"
cat > "$work/l2/app/hello.sh" <<'SH'
#!/bin/sh
echo "hello from a lazily loaded image: $(uname -s), $(ls /bin | wc -l) entries in /bin"
[ -e /etc/motd ] && echo "unexpected: /etc/motd survived its whiteout" || echo "whiteout applied: OK"
SH
chmod 755 "$work/l2/app/hello.sh"
: > "$work/l2/etc/.wh.motd"

blob() { # FILE -> prints digest hex, stores blob
  local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$out/blobs/sha256/$d"; echo "$d"
}
layer() { # DIR NAME -> sets LDIGEST LSIZE LDIFF
  tar --sort=name --mtime=@1748736000 --owner=0 --group=0 --numeric-owner --format=pax \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
      -C "$1" -cf "$work/$2.tar" .
  LDIFF=$(sha256sum "$work/$2.tar" | cut -d' ' -f1)
  gzip -n -6 -c "$work/$2.tar" > "$work/$2.tar.gz"
  LDIGEST=$(blob "$work/$2.tar.gz"); LSIZE=$(stat -c %s "$work/$2.tar.gz")
}
layer "$work/l1" base; d1=$LDIGEST s1=$LSIZE f1=$LDIFF
layer "$work/l2" app;  d2=$LDIGEST s2=$LSIZE f2=$LDIFF

printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/app/hello.sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' \
  "$f1" "$f2" > "$work/config.json"
cd_=$(blob "$work/config.json"); cs=$(stat -c %s "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$cd_" "$cs" "$d1" "$s1" "$d2" "$s2" > "$work/manifest.json"
md=$(blob "$work/manifest.json"); ms=$(stat -c %s "$work/manifest.json")
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"demo"}}]}' \
  "$md" "$ms" > "$out/index.json"
echo "oci:$out:demo"
