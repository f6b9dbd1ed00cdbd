#!/usr/bin/env bash
# Installs what lode's build, tests and demo need on a Debian machine (as root).
# Idempotent: packages already present are not fetched again.
set -euo pipefail

APT_PACKAGES=(
  e2fsprogs          # e2fsck/mke2fs/debugfs: judges of the flattener
  fuse3              # fusermount3 and the FUSE userspace bits
  memcached          # L2 shared-cache nodes in tests
  libnbd-bin         # nbdinfo/nbdcopy: NBD clients in tests
  qemu-utils         # qemu-img: NBD client in tests
  python3-libnbd     # nbdsh (libnbd Python shell): raw NBD requests in cli tests
  busybox-static     # the demo's tiny self-made image
  util-linux         # losetup, mount
  umoci              # independent reference unpacker in flattener tests
  crun               # OCI runtimes for `lode run` (tests, bench/run.sh)
  runc
  time               # peak RSS in bench scripts
  openssl            # `openssl speed`: the baseline of bench/crypto-limit.sh
  docker-registry    # a real registry on loopback for the docker:// source tests
  skopeo             # loads corpus images into that registry
  apache2-utils      # htpasswd: the registry's basic-auth test
  pkg-config
  python3-pip
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# An S3- and KMS-compatible server for loopback tests.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "installing moto[server] from PyPI"
  python3 -m pip install -q 'moto[server]' 2>&1 | grep -v "Running pip as the 'root' user" || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust >= 1.88 with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi
