#!/usr/bin/env bash
# Runs every benchmark of twinflash (release builds, real services on loopback) and rewrites docs/benchmarks.md.
#   scripts/bench.sh            everything (about 15 minutes on 2 cores, most of it release builds)
#   scripts/bench.sh --quick    smaller sizes, for a smoke run (figures not comparable with the goals)
# Speed and memory goals are proven here, never by timed assertions in tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
tf_need_rust
tf_need_services
tf_need_emulator
[ -x /usr/bin/time ] || tf_need_apt /usr/bin/time:time

quick=false
[ "${1:-}" = "--quick" ] && quick=true
if $quick; then fetch_mib=64; rss_mib=64; intents=50; api_devices=1000; installs=5; sig_mib=16; gdb_mib=16; confirm_runs=5; else fetch_mib=512; rss_mib=512; intents=200; api_devices=10000; installs=20; sig_mib=64; gdb_mib=512; confirm_runs=20; fi

out=docs/benchmarks.md
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

tf_log "release builds"
cargo build --release --locked -q -p twinflash-edge -p twinflash-cloud --bins
cargo build --release --locked -q -p twinflash-bench --examples
cargo build --release --locked -q -p twinflash-flasher --no-default-features --example bench_gdb

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
sha=$(lscpu | grep -qw sha_ni && echo "SHA-NI" || echo "no SHA-NI")
machine="$(nproc) cores ($cpu, $sha), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, $(uname -sr), $(rustc --version | cut -d' ' -f1-2), $(git rev-parse --short HEAD)$([ -z "$(git status --porcelain)" ] || echo '+dirty')"

run() { # title command...
    local title=$1; shift
    tf_log "$title"
    {
        echo
        echo "### $title"
        echo
        echo '```'
        echo "$*"
        echo '```'
        echo
        "$@" 2>"$tmp/err" || { echo "(failed: $(tail -n 3 "$tmp/err" | tr '\n' ' '))"; }
        # Hand-written analysis that belongs under this section (NOTES=file run ...).
        if [ -n "${NOTES:-}" ]; then echo; cat "$NOTES"; fi
    } >>"$tmp/body"
}

agent_table() {
    echo "| benchmark | goal | figure | anchor measured in the same run |"
    echo "|---|---|---|---|"
    "$@"
}

: >"$tmp/body"
run "Edge agent: latency (issue 5, B3)" agent_table target/release/examples/bench_agent latency "$intents"
NOTES=scripts/bench/notes/agent-memory.md run "Edge agent: memory (issue 5)" agent_table target/release/examples/bench_agent rss "$rss_mib"
run "Edge agent: 100 devices on one agent (issue 5)" agent_table target/release/examples/bench_agent fleet 100 1024
run "Fleet: 1,000 devices across 10 agents on one broker (issue 8)" agent_table target/release/examples/bench_agent fleet-multi 10 100 64
run "Twin: messages per install, edgecore-acknowledged latency, anti-entropy cost (issue 13; against the edgecore stand-in)" agent_table target/release/examples/bench_agent twin "$installs" 100 10
run "DMI mode: 100 new Devices through one agent (issue 14; against the DMI stand-in)" agent_table target/release/examples/bench_dmi fleet 100
NOTES=scripts/bench/notes/dmi-cost.md run "DMI mode: anti-entropy cost of converged devices (issue 14; against the DMI stand-in)" agent_table target/release/examples/bench_dmi cost
NOTES=scripts/bench/notes/dmi-latency.md run "DMI mode: end of the flash to DeviceStatus, calls per install (issue 22; DMI and cloudcore stand-ins)" agent_table target/release/examples/bench_dmi latency 10
NOTES=scripts/bench/notes/dmi-restart.md run "DMI mode: edgecore restarts seen (issue 22; against the DMI stand-in)" agent_table target/release/examples/bench_dmi restart 5
NOTES=scripts/bench/notes/fetch.md run "Fetcher: B1, B2, peak RSS (issue 3)" bash scripts/bench/fetch.sh "$fetch_mib"
run "Rollout planner over 10,000 Devices in 4 waves (issue 7)" target/release/examples/bench_rollout
run "Rollout through the API server: twinflash-cloud, FakeApi, registry, mosquitto, simulated fleet (issue 7, full path)" target/release/examples/bench_rollout_api "$api_devices"
run "Controller: 10,000 Devices to MQTT intents (issue 6)" agent_table target/release/examples/bench_controller 10000
run "Controller through the API server: twinflash-cloud, FakeApi, registry, mosquitto (issue 6, full path)" target/release/examples/bench_controller_api "$api_devices"
run "Controller anti-entropy: 10,000 converged Devices, cost per period and CPU of one scan (issue 13, point 3)" target/release/examples/bench_anti_entropy 10000
NOTES=scripts/bench/notes/signatures.md run "Signatures: verification time (issue 15; real registry on loopback)" agent_table target/release/examples/bench_signature "$sig_mib"
NOTES=scripts/bench/notes/hostile.md run "Hostile input: cache re-hash cost, parser memory bounds (issue 23)" target/release/examples/bench_hostile
NOTES=scripts/bench/notes/gdb.md run "gdb backend: flash throughput into QEMU's GDB server against gdb-multiarch (issue 24)" target/release/examples/bench_gdb
run "gdb backend: peak RSS while flashing a ${gdb_mib} MiB BIN (issue 24)" target/release/examples/bench_gdb rss "$gdb_mib"
NOTES=scripts/bench/notes/confirm.md run "Time from reset to confirmation on an emulated STM32 (issue 24)" target/release/examples/bench_confirm "$confirm_runs" 200
NOTES=scripts/bench/notes/binary-size.md run "twinflash-edge release binary, stripped (issues 4, 14 and 15)" bash -c 'echo "| date | commit | with probe-rs, DMI and signatures (goal <= 13 MiB) | without probe-rs |"; echo "|---|---|---|---|"; bash scripts/bench/binary-size.sh'

{
    echo "# Benchmarks"
    echo
    echo "Every figure below was measured by \`scripts/bench.sh$($quick && echo ' --quick')\` in one run on: $machine,"
    echo "on $(date -u +%Y-%m-%d). Each section shows the command that reproduces it; anchors (curl, openssl, skopeo, a"
    echo "bare mosquitto round trip) are measured in the same run so the ratios hold across machines. Release builds."
    echo "Goals come from the issues; a figure that misses its goal is shown as measured, not hidden."
    cat "$tmp/body"
} >"$out"
tf_log "wrote $out"
