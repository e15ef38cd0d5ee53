#!/usr/bin/env bash
# Long chaos soak of the edge agent: the same test as in scripts/test.sh, with more cycles and devices.
#   scripts/chaos.sh [CYCLES] [DEVICES] [SEED]        e.g. scripts/chaos.sh 500 20
# A failed run prints its seed; rerun it with the same SEED to replay the same fault schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
tf_need_rust
tf_need_services
export TWINFLASH_CHAOS_CYCLES=${1:-200}
export TWINFLASH_CHAOS_DEVICES=${2:-20}
[ -n "${3:-}" ] && export TWINFLASH_CHAOS_SEED=$3
tf_log "chaos soak: $TWINFLASH_CHAOS_CYCLES cycles, $TWINFLASH_CHAOS_DEVICES devices"
cargo test --release --locked -p twinflash-edge --test chaos -- --nocapture
