#!/usr/bin/env bash
# README command one: twinflash doing its job on this machine, with nothing but loopback services.
#
# Builds release binaries; starts a real docker-registry and mosquitto on free loopback ports; makes two firmware
# images (Intel HEX and raw binary); pushes them as OCI artifacts with `twinflash push`; starts `twinflash-edge`
# with three simulated devices (one in MCUboot-like A/B mode); sets the wanted firmware of each device through its
# twin with `twinflash set`, through an edgecore stand-in (KubeEdge cannot be installed here: the test kit's
# `edgecore_standin` example, a TEST STAND-IN that stores twins, answers and reconnects as edgecore v1.23.1 does, see
# docs/kubeedge.md section 9), waiting for its acknowledgement, and shows edgecore's view live; then upgrades all of them to
# the second version; and ends with a table of every device's twin. Stops everything it started; exits non-zero if
# a device did not converge.
#
# scripts/demo.sh --dmi runs the KubeEdge-native path instead: no broker, no `twinflash set`. twinflash-edge runs
# as edgecore's DMI mapper against the test kit's `dmi_edgecore_standin` (a TEST STAND-IN for edgecore's DMI side,
# see docs/kubeedge.md section 11), the devices are declared only by Device objects (YAML files the stand-in
# watches, as cloudcore would deliver them), and an upgrade is a change of the Device's desired `firmware`.
#
# scripts/demo.sh --mcu updates an emulated microcontroller: an STM32F405 (QEMU's netduinoplus2) started with its GDB
# server and UART on loopback, test firmware built from C (harness/testdata/firmware) with arm-none-eabi-gcc, flashed
# by the agent's gdb backend and confirmed by the board's boot banner on its UART. It installs 1.0.0 (ELF), then a
# 2.0.0 (BIN) that hangs before its banner and is reverted (failed:boot-failed, the twin still on 1.0.0), then 1.1.0
# (Intel HEX), showing the UART and the twin after each step. Same MQTT path and edgecore stand-in as the default.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh

path=mqtt
case "${1:-}" in
--dmi) path=dmi ;;
--mcu) path=mcu ;;
"") ;;
-h | --help)
    sed -n '2,22p' "$0"
    exit 0
    ;;
*)
    echo "usage: scripts/demo.sh [--dmi | --mcu]" >&2
    exit 2
    ;;
esac

tf_need_rust
tf_need_services
[ "$path" = mcu ] && tf_need_emulator

work=$(mktemp -d -t twinflash-demo.XXXXXX)
cleanup() {
    tf_stop_all
    rm -rf "$work"
}
trap cleanup EXIT

tf_log "building release binaries (the first build takes several minutes)"
cargo build --release --locked -q -p twinflash-cli -p twinflash-edge -p twinflash-cloud
cargo build --release --locked -q -p twinflash-testkit --example edgecore_standin --example dmi_edgecore_standin
[ "$path" = mcu ] && cargo build --release --locked -q -p twinflash-harness --example emulated_board
bin=$PWD/target/release
start=$SECONDS

if [ "$path" = dmi ]; then
    tf_log "this demo runs the KubeEdge-native DMI path (scripts/demo.sh without --dmi runs the MQTT path)"
    tf_log "starting docker-registry on a free loopback port (no broker: DMI needs none)"
    tf_start_registry "$work/registry"
    echo "  registry $TF_REGISTRY" >&2
else
    tf_log "this demo runs the MQTT twin path (scripts/demo.sh --dmi runs the KubeEdge-native DMI path, --mcu an emulated STM32)"
    tf_log "starting docker-registry and mosquitto on free loopback ports"
    tf_start_registry "$work/registry"
    tf_start_mosquitto "$work/mqtt"
    mqtt="mqtt://127.0.0.1:$TF_MQTT_PORT"
    echo "  registry $TF_REGISTRY, broker $mqtt" >&2
fi

tf_log "a release signing key (ECDSA P-256, as cosign generate-key-pair makes; here with openssl)"
mkdir -p "$work/keys"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/keys/release.key" 2>/dev/null
openssl pkey -in "$work/keys/release.key" -pubout -out "$work/keys/release.pub"

# The agent's settings every demo shares: the registry, the signature policy, the log.
edge_common_toml() {
    cat <<TOML
[registry]
plain_http = ["$TF_REGISTRY"]
[signatures]
mode = "require"
keys = ["$work/keys/release.pub"]
[log]
level = "warn"
TOML
}

# The agent's settings of the MQTT demos: node, broker and the shared ones; the devices follow.
mqtt_edge_head() {
    cat <<TOML
node = "demo-node"
state_dir = "$work/edge"
[mqtt]
url = "$mqtt"
client_id = "twinflash-edge-demo"
TOML
    edge_common_toml
}

if [ "$path" = mcu ]; then
    # shellcheck source=scripts/lib/demo-mcu.sh
    source scripts/lib/demo-mcu.sh
    exit 0
fi

tf_log "making two firmware images for an STM32F411 (flash at 0x08000000)"
python3 - "$work" <<'PY'
import sys
w = sys.argv[1]
def body(version, size):
    text = f"blinky {version} ".encode()
    return (text * (size // len(text) + 1))[:size]
# 1.0.0 as Intel HEX (records of 16 bytes with checksums, extended linear address 0x0800)
data, base, lines = body("1.0.0", 24 * 1024), 0x08000000, [":020000040800F2"]
for off in range(0, len(data), 16):
    chunk = data[off:off + 16]
    rec = [len(chunk), (off >> 8) & 0xFF, off & 0xFF, 0] + list(chunk)
    rec.append((-sum(rec)) & 0xFF)
    lines.append(":" + "".join(f"{b:02X}" for b in rec))
lines.append(":00000001FF")
open(f"{w}/blinky-1.0.0.hex", "w").write("\n".join(lines) + "\n")
# 1.1.0 as a raw binary (needs --base-address)
open(f"{w}/blinky-1.1.0.bin", "wb").write(body("1.1.0", 32 * 1024))
PY

tf_log "twinflash push --sign-key (format detected from content; a cosign signature at the sha256-<hex>.sig tag; the digest-pinned reference is the last line)"
ref1=$("$bin/twinflash" push "$TF_REGISTRY/fw/blinky:1.0.0" "$work/blinky-1.0.0.hex" \
    --version 1.0.0 --chip STM32F411RETx --plain-http --sign-key "$work/keys/release.key" | tail -n 1)
ref2=$("$bin/twinflash" push "$TF_REGISTRY/fw/blinky:1.1.0" "$work/blinky-1.1.0.bin" \
    --version 1.1.0 --chip STM32F411RETx --base-address 0x08000000 --plain-http \
    --sign-key "$work/keys/release.key" | tail -n 1)
echo "  1.0.0 -> $ref1" >&2
echo "  1.1.0 -> $ref2" >&2
"$bin/twinflash" inspect "$ref2" --plain-http --verify-key "$work/keys/release.pub" >&2
tf_log "twinflash verify: the agent below requires this signature (signatures = \"require\")"
"$bin/twinflash" verify "$ref2" --plain-http --key "$work/keys/release.pub" >&2

# The single-bank devices' flash holds exactly the last image.
check_flash() {
    python3 - "$work" <<'PY' >&2
import sys
w = sys.argv[1]
want = open(f"{w}/blinky-1.1.0.bin", "rb").read()
for i in (1, 2):
    flash = open(f"{w}/devices/blinky-0{i}/flash.bin", "rb").read()
    assert flash[:len(want)] == want, f"blinky-0{i}: flash.bin does not hold 1.1.0"
print("  flash.bin of the single-bank devices holds exactly the 1.1.0 image")
PY
}

if [ "$path" = dmi ]; then
    # The Devices as cloudcore delivers them: protocol twinflash, flat config data (the origin, above 2^24, as a
    # string: KubeEdge passes numbers through float32), the wanted firmware as the desired value of `firmware`.
    cluster() { # reference
        cat >"$work/cluster/00-model.yaml" <<YAML
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {name: blinky-model, namespace: default}
spec:
  protocol: twinflash
  properties:
  - {name: firmware, type: STRING, accessMode: ReadWrite}
  - {name: firmware-version, type: STRING, accessMode: ReadOnly}
  - {name: firmware-state, type: STRING, accessMode: ReadOnly}
YAML
        for i in 1 2 3; do
            ab=false
            [ "$i" = 3 ] && ab=true
            cat >"$work/cluster/blinky-0$i.yaml.tmp" <<YAML
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {name: blinky-0$i, namespace: default}
spec:
  deviceModelRef: {name: blinky-model}
  nodeName: demo-node
  protocol:
    protocolName: twinflash
    configData: {flasher: simulated, chip: STM32F411RETx, dir: "$work/devices/blinky-0$i", size: 262144,
                 origin: "0x08000000", ab: $ab, write_bytes_per_sec: 65536}
  properties:
  - {name: firmware, desired: {value: "$1", metadata: {type: string}}, visitors: {}}
  - {name: firmware-version, desired: {value: ""}, visitors: {}}
  - {name: firmware-state, desired: {value: ""}, reportCycle: 60000, visitors: {}}
YAML
            mv "$work/cluster/blinky-0$i.yaml.tmp" "$work/cluster/blinky-0$i.yaml"
        done
    }
    wait_installed() { # reference
        local deadline=$((SECONDS + 120)) i line ok
        while :; do
            ok=0
            for i in 1 2 3; do
                line=$(grep "^twins default/blinky-0$i " "$work/edgecore.out" | tail -n 1 || true)
                case "$line" in
                *"firmware=$1 "*"firmware-state=installed "*) ok=$((ok + 1)) ;;
                esac
            done
            [ "$ok" = 3 ] && return 0
            if [ $SECONDS -gt $deadline ]; then
                echo "demo: not every device converged to $1; edgecore's view:" >&2
                tail -n 20 "$work/edgecore.out" >&2
                return 1
            fi
            sleep 0.5
        done
    }
    mkdir -p "$work/cluster" "$work/edgecore"
    {
        cat <<TOML
node = "demo-node"
state_dir = "$work/edge"
[kubeedge]
mode = "dmi"
dmi_socket = "$work/edgecore/dmi.sock"
TOML
        edge_common_toml
    } >"$work/edge.toml"
    tf_log "twinflash-edge in DMI mode: no [mqtt], no [[devices]]; devices come from their Device objects"
    "$bin/twinflash-edge" --config "$work/edge.toml" --check-config >&2
    tf_log "starting the DMI edgecore stand-in (a TEST STAND-IN for edgecore's DMI side; KubeEdge cannot be installed here)"
    "$bin/examples/dmi_edgecore_standin" --dir "$work/edgecore" --watch "$work/cluster" \
        >"$work/edgecore.out" 2>"$work/edgecore.log" &
    TF_PIDS+=($!)
    "$bin/twinflash-edge" --config "$work/edge.toml" 2>"$work/edge.log" &
    TF_PIDS+=($!)
    for step in "1.0.0 $ref1" "1.1.0 $ref2"; do
        set -- $step
        tf_log "the cloud sets every Device's desired firmware to fw/blinky:$1 (digest-pinned: no twinflash-cloud runs here to pin tags)"
        cluster "$2"
        tf_log "edgecore's stored twins, as the agent's ReportDeviceStatus calls change them"
        wait_installed "$2"
        grep '^twins ' "$work/edgecore.out" | tail -n 6 | sed 's/^/  /' >&2
    done
    tf_log "every device's twin in edgecore's store"
    for i in 1 2 3; do
        grep "^twins default/blinky-0$i " "$work/edgecore.out" | tail -n 1
    done
    check_flash
    echo "demo (DMI path) converged in $((SECONDS - start)) s after the build" >&2
    exit 0
fi

tf_log "starting twinflash-edge with three simulated devices (blinky-03 in A/B mode)"
devices=(default/blinky-01 default/blinky-02 default/blinky-03)
{
    mqtt_edge_head
    for i in 1 2 3; do
        ab=false
        [ "$i" = 3 ] && ab=true
        cat <<TOML
[[devices]]
id = "default/blinky-0$i"
chip = "STM32F411RETx"
[devices.flasher]
kind = "simulated"
dir = "$work/devices/blinky-0$i"
size = 262144
origin = 0x08000000
ab = $ab
write_bytes_per_sec = 65536
TOML
    done
} >"$work/edge.toml"
"$bin/twinflash-edge" --config "$work/edge.toml" --check-config >&2
tf_log "starting the edgecore stand-in (a TEST STAND-IN for KubeEdge's edgecore, which cannot be installed here)"
"$bin/examples/edgecore_standin" --mqtt-port "$TF_MQTT_PORT" --store "$work/edgecore.json" \
    --device default/blinky-01 --device default/blinky-02 --device default/blinky-03 2>"$work/edgecore.log" &
TF_PIDS+=($!)
"$bin/twinflash-edge" --config "$work/edge.toml" 2>"$work/edge.log" &
TF_PIDS+=($!)

install() { # version tag
    tf_log "twinflash set: every device wants fw/blinky:$1 (the tag is pinned to its digest first)"
    for d in "${devices[@]}"; do
        "$bin/twinflash" set "$d" "$TF_REGISTRY/fw/blinky:$1" --mqtt "$mqtt" --plain-http >&2
    done
    tf_log "progress as edgecore stores it, live (twinflash status --watch --until-installed)"
    "$bin/twinflash" status "${devices[@]}" --mqtt "$mqtt" --watch --until-installed --wait 90 >"$work/table"
}
install 1.0.0
install 1.1.0

tf_log "every device's twin"
cat "$work/table"
echo
for i in 1 2 3; do
    echo "  blinky-0$i: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d)' "$work/devices/blinky-0$i/installed.json" 2>/dev/null | head -c 160)" >&2
done
check_flash
echo "demo (MQTT path) converged in $((SECONDS - start)) s after the build" >&2
