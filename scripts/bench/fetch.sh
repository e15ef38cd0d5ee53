#!/usr/bin/env bash
# Benchmarks B1, B2 and peak RSS of the firmware fetcher (issue 3). Prints markdown rows for
# docs/benchmarks.md. Usage: scripts/bench/fetch.sh [size in MiB, default 512]
#  B1: fetch + verify an artifact from a local registry with `twinflash pull`, against
#      `curl -o` of the blob alone, `curl -o && sync -d` (the same bytes made durable, as the fetcher
#      does), `curl && openssl dgst -sha256`, and `skopeo copy` to an OCI layout.
#  B2: bytes transferred over artifact size with the harness fault proxy cutting every 4 MiB.
#  RSS: peak resident set of `twinflash pull` (/usr/bin/time -v).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../lib/deps.sh
source "$ROOT/scripts/lib/deps.sh"
tf_need_rust
tf_need_apt docker-registry:docker-registry skopeo:skopeo curl:curl openssl:openssl
[ -x /usr/bin/time ] || tf_need_apt /usr/bin/time:time

SIZE_MIB=${1:-512}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
tf_log "building release twinflash and the B2 example"
(cd "$ROOT" && cargo build --release --locked -q -p twinflash-cli \
    && cargo build --release --locked -q -p twinflash-artifact --example bench_resume)
BIN=$TARGET/release/twinflash

WORK=$(mktemp -d "${TMPDIR:-/tmp}/twinflash-bench.XXXXXX")
REG_PID=
cleanup() {
    [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HOST=127.0.0.1:$PORT
cat >"$WORK/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $WORK/storage
http:
  addr: $HOST
  secret: bench
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -sf "http://$HOST/v2/" >/dev/null && break; sleep 0.05; done

tf_log "generating and pushing a ${SIZE_MIB} MiB artifact"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$WORK/fw.bin"
REF=$("$BIN" push "$HOST/bench/fw:1.0.0" "$WORK/fw.bin" --version 1.0.0 --chip bench \
    --base-address 0 --plain-http | tail -n 1)
LAYER=$("$BIN" inspect "$REF" --plain-http --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["layer_digest"])')
URL="http://$HOST/v2/bench/fw/blobs/$LAYER"
BYTES=$((SIZE_MIB * 1024 * 1024))

now() { date +%s.%N; }
declare -A SECS
RUNS=${RUNS:-3}
timeit() { # name command...: one timed run; keeps the best per name
    local name=$1; shift
    local t0 t1 d
    rm -rf "$WORK/out" && mkdir "$WORK/out"   # outputs of the previous run, removed untimed
    sync
    t0=$(now)
    if ! "$@" >/dev/null 2>"$WORK/$name.err"; then
        echo "error: $name failed: $(tail -n 3 "$WORK/$name.err")" >&2
        exit 1
    fi
    t1=$(now)
    d=$(echo "$t1 - $t0" | bc -l)
    if [ -z "${SECS[$name]:-}" ] || [ "$(echo "$d < ${SECS[$name]}" | bc -l)" = 1 ]; then
        SECS[$name]=$d
    fi
    if [ "$name" = pull ]; then
        d=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fetch_seconds"])' "$WORK/pull.json")
        if [ -z "${SECS[fetch]:-}" ] || [ "$(echo "$d < ${SECS[fetch]}" | bc -l)" = 1 ]; then
            SECS[fetch]=$d
        fi
    fi
}
mbps() { echo "scale=0; $BYTES / ${SECS[$1]} / 1000000" | bc -l; }

curl_only() { curl -sf -o "$WORK/out/curl.out" "$URL"; }
curl_sync() { curl -sf -o "$WORK/out/curl.out" "$URL" && sync -d "$WORK/out/curl.out"; }
curl_sha() { curl -sf -o "$WORK/out/curl.out" "$URL" && openssl dgst -sha256 "$WORK/out/curl.out"; }
skopeo_copy() {
    skopeo copy -q --src-tls-verify=false --preserve-digests "docker://$HOST/bench/fw@${REF##*@}" "oci:$WORK/out/layout:fw"
}
pull() {
    "$BIN" pull "$REF" --plain-http --cache-dir "$WORK/out/cache" -o "$WORK/out/pull.out" --json >"$WORK/pull.json"
}

tf_log "B1: timing (best of $RUNS rounds, each round runs every tool once, warm page cache)"
mkdir -p "$WORK/out"; curl_only  # warm the registry's file in the page cache
# Round-robin, so a burst of load from other processes hits every tool alike, not just one.
for _ in $(seq "$RUNS"); do
    timeit curl curl_only
    timeit curl_sync curl_sync
    timeit curl_sha curl_sha
    timeit skopeo skopeo_copy
    timeit pull pull
    cmp -s "$WORK/out/pull.out" "$WORK/fw.bin" || { echo "error: pulled file differs" >&2; exit 1; }
done
rm -rf "$WORK/out"

tf_log "peak RSS of twinflash pull"
rm -rf "$WORK/cache" "$WORK/pull.out"
/usr/bin/time -v "$BIN" pull "$REF" --plain-http --cache-dir "$WORK/cache" -o "$WORK/pull.out" \
    >/dev/null 2>"$WORK/time.txt"
RSS_KB=$(awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$WORK/time.txt")
rm -rf "$WORK/cache" "$WORK/pull.out"

ratio() { echo "scale=2; ${SECS[$1]} / ${SECS[$2]}" | bc -l; }
echo
echo "Command: scripts/bench/fetch.sh $SIZE_MIB   (best of $RUNS, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), $(date -u +%Y-%m-%d))"
echo
echo "| B1: ${SIZE_MIB} MiB from a local registry | seconds | MB/s | time / fetcher time |"
echo "|---|---|---|---|"
for k in fetch pull curl curl_sync curl_sha skopeo; do
    case $k in
        fetch) label='twinflash fetcher: download, verify, fsync, rename into cache';;
        pull) label='`twinflash pull -o file` (the above + process start + copy out)';;
        curl) label='`curl -o file <blob url>`';;
        curl_sync) label='`curl -o file && sync -d file` (durable, like the fetcher)';;
        curl_sha) label='`curl && openssl dgst -sha256`';;
        skopeo) label='`skopeo copy` into an OCI layout';;
    esac
    printf '| %s | %.2f | %s | %s |\n' "$label" "${SECS[$k]}" "$(mbps $k)" "$(ratio $k fetch)"
done
echo
echo "| Peak RSS of \`twinflash pull\` (${SIZE_MIB} MiB) | $((RSS_KB / 1024)) MiB |"
echo "|---|---|"
echo
tf_log "B2: cut every 4 MiB"
"$TARGET/release/examples/bench_resume" "$WORK/fw.bin"
