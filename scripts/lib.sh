# shellcheck shell=bash
# Helpers shared by the scripts in scripts/ and by .ci/run. Source it, do not run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It sets SBC_ROOT (the repository root) and defines:
#   banner TEXT...          announce a step (and remember when it started)
#   step_done               print how long the current step took
#   die MESSAGE...          print an error and exit 1
#   need_apt PKG...         install the Debian packages that are missing (apt-get update
#                           runs at most once per process, and only if something is missing)
#   need_cmd CMD PKG        install PKG if CMD is not on PATH
#   sbc_target_dir          export CARGO_TARGET_DIR (default $HOME/.cache/sbc/target,
#                           outside the clone so a fresh CI clone rebuilds incrementally)
#   elapsed SECONDS         format a duration as `1m 05s`

SBC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SBC_ROOT

_sbc_step_start=0
_sbc_apt_updated=0

elapsed() {
    local s=$1
    if ((s >= 60)); then
        printf '%dm %02ds' $((s / 60)) $((s % 60))
    else
        printf '%ds' "$s"
    fi
}

banner() {
    _sbc_step_start=$SECONDS
    printf '\n==== %s ====\n' "$*"
}

step_done() {
    printf -- '---- done in %s\n' "$(elapsed $((SECONDS - _sbc_step_start)))"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Run a command as root: directly when we are root (CI, the dev machines), else via sudo.
_sbc_as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

need_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    echo "installing missing Debian packages: ${missing[*]}"
    if ((_sbc_apt_updated == 0)); then
        _sbc_as_root apt-get update -qq
        _sbc_apt_updated=1
    fi
    _sbc_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

need_cmd() {
    command -v "$1" >/dev/null || need_apt "$2"
}

sbc_target_dir() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sbc/target}"
}
