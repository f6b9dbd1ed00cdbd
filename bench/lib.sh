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
