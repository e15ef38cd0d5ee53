# shellcheck shell=bash
# scripts/demo.sh --mcu, sourced by it after the registry, mosquitto and the signing key are up: twinflash updates an
# emulated STM32F405 (QEMU netduinoplus2) through its GDB server, and confirms every install by the boot banner the
# firmware prints on its UART. Uses: $work, $bin, $TF_REGISTRY, $TF_MQTT_PORT, $mqtt, $start.

board=netduinoplus2
chip=STM32F405RG
device=default/stm32-01

tf_log "building the test firmware from C (harness/testdata/firmware/boot.c) with arm-none-eabi-gcc"
fw="$work/firmware"
"$bin/examples/emulated_board" firmware "$fw" "$board" good 1.0.0 >/dev/null
"$bin/examples/emulated_board" firmware "$fw" "$board" hang 2.0.0 >/dev/null
"$bin/examples/emulated_board" firmware "$fw" "$board" good 1.1.0 >/dev/null
echo "  good-1.0.0 prints \`boot version=1.0.0\`; hang-2.0.0 hangs before its banner; good-1.1.0 prints 1.1.0" >&2

tf_log "twinflash push: 1.0.0 as ELF, the hanging 2.0.0 as a raw BIN at 0x08000000, 1.1.0 as Intel HEX (all signed)"
push() { # tag file [push options]
    local tag=$1 file=$2
    shift 2
    "$bin/twinflash" push "$TF_REGISTRY/fw/stm32:$tag" "$file" --version "$tag" --chip "$chip" --plain-http \
        --sign-key "$work/keys/release.key" "$@" | tail -n 1
}
ref1=$(push 1.0.0 "$fw/good-1.0.0.elf")
ref2=$(push 2.0.0 "$fw/hang-2.0.0.bin" --base-address 0x08000000)
ref3=$(push 1.1.0 "$fw/good-1.1.0.hex")
printf '  1.0.0 -> %s\n  2.0.0 -> %s\n  1.1.0 -> %s\n' "$ref1" "$ref2" "$ref3" >&2

tf_log "starting the emulated board: QEMU $board, empty flash, GDB server and UART on loopback"
"$bin/examples/emulated_board" run "$board" >"$work/board.out" 2>"$work/board.log" &
TF_PIDS+=($!)
deadline=$((SECONDS + 30))
until grep -q '^uart=' "$work/board.out" 2>/dev/null; do
    if [ $SECONDS -gt $deadline ]; then
        echo "demo: the emulated board did not start:" >&2
        cat "$work/board.log" >&2
        exit 1
    fi
    sleep 0.2
done
gdb=$(sed -n 's/^gdb=//p' "$work/board.out")
uart=$(sed -n 's/^uart=//p' "$work/board.out")
echo "  GDB server $gdb, UART captured in $uart" >&2

# The confirmation check, as a firmware team would write it for a board on a serial port: the newest boot banner
# on the UART names the version just flashed (the UART ends its lines with CR LF).
check='last=$(tr -d "\r" < "$0" | grep "^boot version=" | tail -n 1); [ "$last" = "boot version=$1" ]'
{
    mqtt_edge_head
    cat <<TOML
[[devices]]
id = "$device"
chip = "$chip"
[devices.flasher]
kind = "gdb"
target = "$gdb"
reset = "system_reset"
[devices.confirm]
kind = "command"
argv = ["/bin/sh", "-c", '$check', "$uart", "{version}"]
timeout_secs = 10
interval_ms = 250
TOML
} >"$work/edge.toml"
"$bin/twinflash-edge" --config "$work/edge.toml" --check-config >&2
tf_log "starting the edgecore stand-in (a TEST STAND-IN for KubeEdge's edgecore, which cannot be installed here)"
"$bin/examples/edgecore_standin" --mqtt-port "$TF_MQTT_PORT" --store "$work/edgecore.json" \
    --device "$device" 2>"$work/edgecore.log" &
TF_PIDS+=($!)
"$bin/twinflash-edge" --config "$work/edge.toml" 2>"$work/edge.log" &
TF_PIDS+=($!)

uart_banners() {
    tr -d '\r' <"$uart" | grep '^boot version=' | sed 's/^/  UART: /' >&2 || echo "  UART: (nothing yet)" >&2
}
# Sets the wanted firmware by its tag (twinflash set pins it to its digest) and follows edgecore's twin until the
# device settles (installed, or failed: the caller checks which with twin_is).
step() { # tag
    tf_log "twinflash set: $device wants fw/stm32:$1"
    "$bin/twinflash" set "$device" "$TF_REGISTRY/fw/stm32:$1" --mqtt "$mqtt" --plain-http >&2
    "$bin/twinflash" status "$device" --mqtt "$mqtt" --watch --until-installed --wait 120 >"$work/table" || true
    cat "$work/table" >&2
}
twin_is() { # firmware state version
    "$bin/twinflash" status "$device" --mqtt "$mqtt" --json >"$work/twin.json"
    python3 - "$work/twin.json" "$@" <<'PY'
import json, sys
row = json.load(open(sys.argv[1]))[0]["edgecore"]
want = dict(zip(("reported", "state", "version"), sys.argv[2:5]))
got = {k: row.get(k) for k in want}
if got != want:
    sys.exit(f"demo: edgecore's twin is {got}, expected {want}")
print(f"  edgecore's twin: firmware={got['reported'][-19:]}... state={got['state']} version={got['version']}", file=sys.stderr)
PY
}

tf_log "UART before the first install (empty flash: the CPU waits for firmware)"
uart_banners
step 1.0.0
twin_is "$ref1" installed 1.0.0
uart_banners

tf_log "a bad release: 2.0.0 hangs before its banner; the agent must not report it installed, and must put 1.0.0 back"
step 2.0.0
twin_is "$ref1" failed:boot-failed 1.0.0
uart_banners
grep -q 'boot version=2.0.0' "$uart" && { echo "demo: 2.0.0 printed a banner" >&2; exit 1; }

step 1.1.0
twin_is "$ref3" installed 1.1.0
uart_banners

tf_log "what the agent logged about the bad release"
grep -E "did not confirm|putting the previous firmware back|previous firmware back" "$work/edge.log" | sed 's/^/  /' | cut -c1-200 >&2 || true
echo "demo (emulated STM32) converged in $((SECONDS - start)) s after the build" >&2
