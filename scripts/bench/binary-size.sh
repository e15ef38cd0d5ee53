#!/bin/sh
# Release size of the twinflash-edge binary, stripped, with and without the probe-rs backend.
# Prints one markdown table row: | <date> | <git rev> | <with probe-rs> | <without probe-rs> |
# Slow (two release builds with LTO); set CARGO_TARGET_DIR to reuse a target directory.
set -eu
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release/twinflash-edge"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

size_of() {
  cp "$bin" "$tmp/edge"
  if command -v strip >/dev/null 2>&1; then strip "$tmp/edge"; fi   # the release profile strips already
  stat -c %s "$tmp/edge"
}

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB (%d bytes)", b / 1048576, b }'; }

# The flasher feature is named directly, so this works whatever twinflash-edge's own feature list says.
cargo build --release --locked -p twinflash-edge --no-default-features --features twinflash-flasher/probe-rs >&2
with=$(size_of)
cargo build --release --locked -p twinflash-edge --no-default-features >&2
without=$(size_of)

echo "| $(date -u +%Y-%m-%d) | $(git rev-parse --short HEAD 2>/dev/null || echo unknown) | $(mib "$with") | $(mib "$without") |"
limit=$((13 * 1024 * 1024))
if [ "$with" -gt "$limit" ]; then
  echo "twinflash-edge with probe-rs (and DMI) is over the 13 MiB goal of issues 14 and 15" >&2
  exit 1
fi
