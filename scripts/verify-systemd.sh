#!/usr/bin/env bash
# Check the unit files in systemd/ without installing anything.
#
#   scripts/verify-systemd.sh [BIN_DIR]
#
# BIN_DIR holds the built sbc-control and sbc-media (default: $SBC_BIN_DIR, else
# $CARGO_TARGET_DIR/debug, else target/debug; build them first with
# `cargo build --workspace --bins`).
#
# 1. `systemd-analyze verify` on copies of the units whose /usr/local/bin/ paths point
#    into BIN_DIR. verify parses every line, resolves the units' dependencies (both
#    units are verified together, so Wants=sbc-media.service resolves) and checks that
#    every Exec*= command exists and is executable, which is why the installed path
#    /usr/local/bin cannot be verified as is. It reports unknown keys and bad values
#    as warnings and still exits 0, so here ANY output is a failure.
# 2. `systemd-analyze security --offline`: each unit's exposure score must stay at or
#    below MAX_EXPOSURE (systemd's scale 0-10; both units score about 2 today).
# 3. What systemd cannot know: the lifetime rules (stopping or restarting the control
#    plane never stops the media node), the shared, preserved /run/sbc, and that the
#    command lines are the ones the binaries accept (checked by running the real
#    binaries' `check-config` on configs/demo.yaml, as ExecReload does).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SBC_ROOT"

MAX_EXPOSURE=${MAX_EXPOSURE:-2.5}
bin_arg=${1:-${SBC_BIN_DIR:-${CARGO_TARGET_DIR:-$SBC_ROOT/target}/debug}}
bin_dir=$(cd "$bin_arg" 2>/dev/null && pwd) ||
    die "BIN_DIR $bin_arg does not exist: build first (cargo build --workspace --bins)"
[[ $bin_dir =~ [[:space:]] ]] && die "BIN_DIR must not contain spaces (it is spliced into ExecStart=): $bin_dir"
for b in sbc-control sbc-media; do
    [[ -x $bin_dir/$b ]] || die "$bin_dir/$b is missing: build first (cargo build --workspace --bins)"
done
need_cmd systemd-analyze systemd

units=(systemd/sbc-media.service systemd/sbc-control.service)
failed=0
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    failed=1
}

# --- 1. systemd-analyze verify -----------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for u in "${units[@]}"; do
    sed "s#/usr/local/bin/#$bin_dir/#g" "$u" >"$work/$(basename "$u")"
done
echo "systemd-analyze verify (binaries from $bin_dir):"
if ! out=$(cd "$work" && systemd-analyze verify --man=no ./*.service 2>&1); then
    fail "systemd-analyze verify exited non-zero"
fi
if [[ -n $out ]]; then
    printf '%s\n' "$out" | sed "s#$work/##g; s#$bin_dir/#/usr/local/bin/#g"
    fail "systemd-analyze verify printed the warnings above"
else
    echo "  ok: no warnings"
fi

# --- 2. exposure score ---------------------------------------------------------------
echo "systemd-analyze security --offline (max exposure $MAX_EXPOSURE):"
for u in "${units[@]}"; do
    name=$(basename "$u")
    score=$(cd "$work" && systemd-analyze security --offline=yes --no-pager "./$name" 2>&1 |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if [[ -z $score ]]; then
        fail "$name: no exposure score from systemd-analyze security"
    elif awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s > m) }'; then
        fail "$name: exposure $score is above $MAX_EXPOSURE (see: systemd-analyze security --offline=yes $u)"
    else
        echo "  $name: $score"
    fi
done

# --- 3. project rules ------------------------------------------------------------------
# Values of KEY= in FILE (all occurrences, space-joined), comments ignored.
values() {
    sed -n "s/^[[:space:]]*$2=//p" "$1" | tr '\n' ' '
}
expect() { # FILE KEY WANTED: some KEY= line of FILE is exactly WANTED
    grep -qxF "$2=$3" "$1" || fail "$1: expected the line '$2=$3'"
}

echo "project rules:"
media=systemd/sbc-media.service
control=systemd/sbc-control.service

# The control plane pulls the media node in and orders after it, but never binds its
# own lifetime to it: BindsTo/Requires/Requisite/PartOf/PropagatesStopTo would stop or
# restart media together with control (or refuse to start without it).
for key in BindsTo Requires Requisite PartOf PropagatesStopTo StopPropagatedFrom Conflicts; do
    if [[ $(values "$control" "$key") == *sbc-media* ]]; then
        fail "$control: $key= names sbc-media.service: stopping or restarting control would touch media"
    fi
done
[[ $(values "$control" Wants) == *sbc-media.service* ]] || fail "$control: expected Wants=sbc-media.service"
[[ $(values "$control" After) == *sbc-media.service* ]] || fail "$control: expected After=sbc-media.service"
# The media node depends on nothing of the control plane (not even ordering).
for key in Wants Requires Requisite BindsTo PartOf After Before PropagatesStopTo \
    StopPropagatedFrom Upholds OnFailure OnSuccess Conflicts; do
    if [[ $(values "$media" "$key") == *sbc-control* ]]; then
        fail "$media: $key= names sbc-control.service: the media node must not depend on control"
    fi
done

for u in "$media" "$control"; do
    expect "$u" User sbc
    expect "$u" Group sbc
    expect "$u" RuntimeDirectory sbc
    # Both units create /run/sbc; without Preserve, stopping either deletes the other's socket.
    expect "$u" RuntimeDirectoryPreserve yes
    expect "$u" StateDirectory sbc
    expect "$u" NoNewPrivileges yes
    expect "$u" ProtectSystem strict
done
expect "$media" ExecStart "/usr/local/bin/sbc-media --config /etc/sbc/sbc.yaml"
expect "$media" Restart always
expect "$media" LimitNOFILE 1048576
expect "$media" LimitMEMLOCK infinity
expect "$control" ExecStart "/usr/local/bin/sbc-control --config /etc/sbc/sbc.yaml"
# shellcheck disable=SC2016 # $MAINPID is literal text in the unit
expect "$control" ExecReload '/bin/kill -HUP $MAINPID'
expect "$control" Restart on-failure
expect "$control" LimitNOFILE 262144

# Every sbc binary command line in the units must be accepted by the real binary: run
# its `check-config` form on the demo config (what ExecReload runs before SIGHUP), and
# make sure a broken file is refused (or the reload guard would wave it through).
for b in sbc-control sbc-media; do
    if ! out=$("$bin_dir/$b" check-config configs/demo.yaml 2>&1); then
        printf '%s\n' "$out" >&2
        fail "$b check-config configs/demo.yaml failed"
    fi
done
broken="$work/broken.yaml"
printf 'control:\n  node_id: c\n  media_nodes:\n    - name: a\n      unixx: /x\n' >"$broken"
if "$bin_dir/sbc-control" check-config "$broken" >/dev/null 2>&1; then
    fail "sbc-control check-config accepted a config with an unknown key"
fi
((failed == 0)) && echo "  ok: lifetimes, directories, limits, command lines"

if ((failed)); then
    echo "verify-systemd: FAILED" >&2
    exit 1
fi
echo "verify-systemd: ok"
