#!/bin/bash
# Show and set a Jetson's power mode (nvpmodel) and clocks (jetson_clocks), saving the previous state
# so that it can be put back after a measurement.
#
#   jetson/power.sh show              the nvpmodel mode and whether jetson_clocks pins the clocks
#   jetson/power.sh max               save the current state, then mode 0 with clocks pinned (mode 0 is
#                                     MAXN on AGX Orin, Orin NX and Xavier; list a board's modes with
#                                     'nvpmodel -p --verbose', and use 'set' where another is the fastest)
#   jetson/power.sh set MODE [--clocks]   save the current state, then nvpmodel MODE (and pin the clocks)
#   jetson/power.sh restore           put back the saved mode and clocks
#
# Measure with fixed clocks: DVFS changes latency from run to run (edgekit profile warns when it sees it).
# nvpmodel may ask to reboot when a mode changes the number of online CPU cores.
set -euo pipefail

state_dir=${EDGEKIT_POWER_STATE:-/var/tmp/edgekit-power}
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

die() { echo "power.sh: error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: this is not a Jetson (or L4T's tools are missing)"; }

mode_id() { $sudo nvpmodel -q 2>/dev/null | awk 'f && /^[0-9]+$/ {print; exit} /NV Power Mode/ {f=1}'; }

show() {
    need nvpmodel
    $sudo nvpmodel -q 2>/dev/null | grep -E "NV Power Mode|^[0-9]+$" || true
    if $sudo jetson_clocks --show >/dev/null 2>&1; then
        # pinned when every online CPU core and the GPU run at their maximum as their minimum
        if $sudo jetson_clocks --show | awk '
            /^cpu[0-9]+:.*Online=1/ || /^GPU MinFreq/ {
                for (i = 1; i <= NF; i++) { if ($i ~ /^MinFreq=/) lo = $i; if ($i ~ /^MaxFreq=/) hi = $i }
                sub("MinFreq=", "", lo); sub("MaxFreq=", "", hi); if (lo != hi) free = 1 }
            END { exit free }'; then
            echo "jetson_clocks: on (clocks pinned)"
        else
            echo "jetson_clocks: off (clocks scale with load)"
        fi
    else
        echo "jetson_clocks: unknown (needs root)"
    fi
    [ -f "$state_dir/nvpmodel" ] && echo "saved state: mode $(cat "$state_dir/nvpmodel") (jetson/power.sh restore)"
    return 0
}

save() {
    need nvpmodel
    need jetson_clocks
    if [ -f "$state_dir/nvpmodel" ]; then
        echo "power.sh: a saved state exists already (mode $(cat "$state_dir/nvpmodel")); keeping it"
        return 0
    fi
    $sudo mkdir -p "$state_dir"
    mode_id | $sudo tee "$state_dir/nvpmodel" >/dev/null
    [ -s "$state_dir/nvpmodel" ] || die "could not read the current mode (nvpmodel -q)"
    $sudo jetson_clocks --store "$state_dir/clocks"
    echo "power.sh: saved mode $(cat "$state_dir/nvpmodel") and the clock settings to $state_dir"
}

set_mode() {
    local mode=$1 clocks=$2
    case "$mode" in ''|*[!0-9]*) die "MODE must be a number (see 'nvpmodel -p --verbose' for this board's modes)";; esac
    save
    $sudo nvpmodel -m "$mode"
    if [ "$clocks" = 1 ]; then
        $sudo jetson_clocks
    fi
    show
}

restore() {
    need nvpmodel
    [ -f "$state_dir/nvpmodel" ] || die "nothing saved in $state_dir (run 'power.sh max' or 'power.sh set' first)"
    $sudo nvpmodel -m "$(cat "$state_dir/nvpmodel")"
    if [ -f "$state_dir/clocks" ]; then
        $sudo jetson_clocks --restore "$state_dir/clocks"
    fi
    $sudo rm -rf "$state_dir"
    echo "power.sh: restored"
    show
}

case "${1:-show}" in
    show) show ;;
    max) set_mode 0 1 ;;
    set)
        [ $# -ge 2 ] || die "usage: power.sh set MODE [--clocks]"
        clocks=0
        [ "${3:-}" = "--clocks" ] && clocks=1
        set_mode "$2" "$clocks" ;;
    restore) restore ;;
    -h|--help) sed -n '2,14p' "$0" ;;
    *) die "unknown command '$1' (show, max, set MODE [--clocks], restore)" ;;
esac
