# shellcheck shell=bash
# Installs what twinflash's scripts need, only when it is missing. Sourced by test.sh, demo.sh, bench.sh.

export PATH="$PATH:/usr/sbin:/sbin"

tf_log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

tf_sudo() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "error: need root (or sudo) to run: $*" >&2; return 1; fi
}

# tf_need_apt CMD:PACKAGE ... installs PACKAGE when CMD is not found.
tf_need_apt() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    tf_log "installing from Debian: ${missing[*]}"
    tf_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive tf_sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

tf_need_services() {
    tf_need_apt mosquitto:mosquitto mosquitto_pub:mosquitto-clients docker-registry:docker-registry \
        skopeo:skopeo htpasswd:apache2-utils curl:curl openssl:openssl python3:python3 sqlite3:sqlite3
}

# Debian's backports suite of this release (bookworm-backports), for packages that must come from there.
tf_add_backports() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || { echo "error: cannot tell the Debian release (VERSION_CODENAME)" >&2; return 1; }
    if grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then return 0; fi
    tf_log "adding ${codename}-backports to apt"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$codename" | tf_sudo tee /etc/apt/sources.list.d/backports.sources >/dev/null
}

# The emulated boards (twinflash-harness board, the gdb backend's tests and bench): qemu-system-arm, the ARM
# cross-compiler for the test firmware, gdb-multiarch for the bench's baseline. qemu-system-arm comes from
# bookworm-backports: build machines carry the backports qemu-utils, which bookworm's own qemu-system-arm conflicts with.
tf_need_emulator() {
    if ! command -v qemu-system-arm >/dev/null 2>&1; then
        tf_add_backports
        tf_sudo apt-get update -qq
        local codename
        codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
        tf_log "installing qemu-system-arm from ${codename}-backports"
        DEBIAN_FRONTEND=noninteractive tf_sudo apt-get install -y -qq --no-install-recommends \
            -t "${codename}-backports" qemu-system-arm >/dev/null
    fi
    tf_need_apt arm-none-eabi-gcc:gcc-arm-none-eabi gdb-multiarch:gdb-multiarch
}

# The Python `oras` package (PyPI): an artifact written by another tool, for the interop tests.
tf_need_oras() {
    python3 -c 'import oras' 2>/dev/null && return 0
    tf_log "installing the Python oras package (interop tests)"
    python3 -m pip install -q oras 2>/dev/null || python3 -m pip install -q --break-system-packages oras
}

tf_need_rust() {
    command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found (install Rust with rustup)" >&2; return 1; }
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
}
