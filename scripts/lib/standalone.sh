# shellcheck shell=bash
# The repository stands alone: no test, script or doc may need a file beside the checkout. Sourced by test.sh.
#
# tf_standalone_check: fails when a tracked file points beside the checkout (a folder beside it such as shared/, or a path that climbs out of
#   the workspace from CARGO_MANIFEST_DIR).
# tf_standalone_run CMD...: runs CMD in a private mount namespace where the checkout's parent directory is an empty
#   tmpfs holding only the checkout itself, so a test that reads a sibling folder fails with "not found" instead of
#   passing on a developer's machine and failing in a user's clone. Needs root and unshare(1); where either is
#   missing, or the parent is a system directory that the build itself needs, CMD runs as it is and this says why.

tf_standalone_check() {
    local hits
    hits=$(git grep -nE '\.\./shared|CARGO_MANIFEST_DIR"\)[^;]*"/\.\./\.\.' -- \
        ':!*.lock' ':!scripts/lib/standalone.sh' 2>/dev/null || true)
    if [ -n "$hits" ]; then
        echo "error: the repository points beside its checkout (a user's clone has nothing there):" >&2
        printf '  %s\n' "$hits" >&2
        return 1
    fi
}

tf_standalone_run() {
    local top parent why=""
    top=$(pwd -P)
    parent=$(dirname "$top")
    case "$parent" in
        / | /tmp | /root | /home | /usr | /var | /opt) why="the checkout's parent $parent is a system directory" ;;
    esac
    for dir in "${CARGO_HOME:-$HOME/.cargo}" "${RUSTUP_HOME:-$HOME/.rustup}" "${TMPDIR:-/tmp}" "${CARGO_TARGET_DIR:-$top}"; do
        case "$(readlink -f "$dir" 2>/dev/null || echo "$dir")/" in
            "$top"/*) ;;
            "$parent"/*) why="$dir lies beside the checkout" ;;
        esac
    done
    [ -z "$why" ] && [ "$(id -u)" -ne 0 ] && why="not root"
    [ -z "$why" ] && ! command -v unshare >/dev/null 2>&1 && why="unshare(1) not found"
    [ -z "$why" ] && ! unshare --mount true 2>/dev/null && why="no mount namespaces here"
    if [ -n "$why" ]; then
        tf_log "siblings of the checkout NOT hidden ($why): only the static check guards against reads beside it"
        "$@"
        return
    fi
    tf_log "siblings of $top hidden (private mount namespace): a test that reads beside the checkout fails"
    unshare --mount --propagation private -- bash -euc '
        top=$1 parent=$2; shift 2
        hold=$(mktemp -d /dev/shm/tf-standalone.XXXXXX)
        mount --bind "$top" "$hold"
        mount -t tmpfs -o mode=0755 tf-standalone "$parent"
        mkdir -p "$top"
        mount --bind "$hold" "$top"
        umount "$hold" && rmdir "$hold"
        cd "$top"
        exec "$@"' tf-standalone "$top" "$parent" "$@"
}
