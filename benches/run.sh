#!/usr/bin/env bash
# Media relay benchmark: how many real-rate audio calls one pinned core relays below
# 0.1 % loss, for sbc-media (each packet engine), rtpengine (userspace forwarding), and
# rawrelay (a trivial recvmmsg/sendmmsg loop: the machine's ceiling). Prints one table.
#
# Layout: the relay under test on CPU $MEDIA_CPU (1), the load generator on CPU
# $LOAD_CPU (0). Everything on 127.0.0.1. Every process this script starts is stopped
# by its PID. See docs/performance.md for what the figures mean.
#
# Knobs (environment), defaults in brackets:
#   SYSTEMS ["sbc rtpengine raw direct"]   which relays to measure (direct: no relay,
#                                           the load generator's own limit)
#   ENGINES ["io_uring portable"]          sbc-media's media.engine values to measure
#   WARMUP [1] TRIAL_SECONDS [4]           per search trial: warm-up, then measured s
#   HALF_SECONDS [8] REPEAT [3]            runs at half the maximum (medians reported)
#   START [500] STEP [500] RESOLUTION [100] MAX_CALLS [5000] MAX_TRIALS [10]
#   LOSS [0.1]                             loss threshold, %
#   MAX_P99_MS [20]                        a level whose p99 one-way latency is above
#                                           this is not held (the relay is queueing)
#   QUIET_WAIT [120] QUIET_PCT [10]        before each run, wait up to QUIET_WAIT s for
#                                           other processes to use < QUIET_PCT % of a CPU
#   MEDIA_CPU [1] LOAD_CPU [0]
#   RESULTS [target/sbc-bench]             where the JSON results and logs go
#   SKIP_BUILD [0]                         1: use the binaries already built
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SYSTEMS=${SYSTEMS:-"sbc rtpengine raw direct"}
ENGINES=${ENGINES:-"io_uring portable"}
WARMUP=${WARMUP:-1}
TRIAL_SECONDS=${TRIAL_SECONDS:-4}
HALF_SECONDS=${HALF_SECONDS:-8}
REPEAT=${REPEAT:-3}
START=${START:-500}
STEP=${STEP:-500}
RESOLUTION=${RESOLUTION:-100}
MAX_CALLS=${MAX_CALLS:-5000}
MAX_TRIALS=${MAX_TRIALS:-10}
LOSS=${LOSS:-0.1}
MAX_P99_MS=${MAX_P99_MS:-20}
QUIET_WAIT=${QUIET_WAIT:-120}
QUIET_PCT=${QUIET_PCT:-10}
MEDIA_CPU=${MEDIA_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
RESULTS=${RESULTS:-$ROOT/target/sbc-bench}
SKIP_BUILD=${SKIP_BUILD:-0}

# Addresses: the load generator's sides, rawrelay's ports, rtpengine's control port,
# sbc-media's metrics; relays allocate media ports in 40000-59999.
LOADGEN_A=127.0.0.1:7000
LOADGEN_B=127.0.0.1:7002
RAW_A=127.0.0.1:7100
RAW_B=127.0.0.1:7102
NG=127.0.0.1:22223
MEDIA_METRICS=127.0.0.1:19091
PORT_MIN=40000
PORT_MAX=59999

say() { printf '== %s\n' "$*" >&2; }

# --- what is missing -------------------------------------------------------------
if [[ " $SYSTEMS " == *" rtpengine "* ]] && ! command -v rtpengine >/dev/null; then
    say "installing rtpengine-daemon (Debian package; userspace forwarding only)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends rtpengine-daemon
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is missing" >&2; exit 1; }
if [ "$SKIP_BUILD" != 1 ]; then
    say "building release binaries"
    cargo build --release --quiet -p sbc-media -p sbc-bench
fi
BIN=$ROOT/target/release

# Every call holds 4 sockets on the relay (RTP + RTCP on two legs).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_CAP=$(( ($(ulimit -n) - 512) / 4 ))
if [ "$MAX_CALLS" -gt "$FD_CAP" ]; then
    say "open-file limit $(ulimit -n): searching up to $FD_CAP calls"
    MAX_CALLS=$FD_CAP
fi

mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

start() { # start NAME CMD... : run CMD in the background on the media CPU; sets PID
    local name=$1
    shift
    taskset -c "$MEDIA_CPU" "$@" >"$RESULTS/$name.relay.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
}

stop() { # stop PID: SIGTERM, then SIGKILL after 10 s
    local pid=$1 _
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

search() { # search NAME PID TARGET-ARGS...
    local name=$1 pid=$2
    shift 2
    local pidargs=()
    [ "$pid" = - ] || pidargs=(--pid "$pid")
    say "$name: searching"
    taskset -c "$LOAD_CPU" "$BIN/loadgen" search "$@" "${pidargs[@]}" \
        --a "$LOADGEN_A" --b "$LOADGEN_B" --cpu "$LOAD_CPU" \
        --warmup "$WARMUP" --seconds "$TRIAL_SECONDS" \
        --half-seconds "$HALF_SECONDS" --repeat "$REPEAT" \
        --start "$START" --step "$STEP" --resolution "$RESOLUTION" --max "$MAX_CALLS" \
        --max-trials "$MAX_TRIALS" --loss "$LOSS" --max-p99-ms "$MAX_P99_MS" \
        --quiet-wait "$QUIET_WAIT" --quiet-pct "$QUIET_PCT" \
        --json "$RESULTS/$name.json" 2>&1 >/dev/null | tee "$RESULTS/$name.log" >&2 || true
}

T0=$(date +%s)
for system in $SYSTEMS; do
    case $system in
    sbc)
        for engine in $ENGINES; do
            cfg=$TMP/media-$engine.yaml
            cat >"$cfg" <<EOF
media:
  node_name: bench
  log:
    format: human
    level: info
  metrics:
    listen: $MEDIA_METRICS
  rpc:
    unix:
      path: $TMP/media.sock
      mode: "0600"
  inactivity_timeout: 1h
  engine: $engine
  cores: [$MEDIA_CPU]
  interfaces:
    - name: lo
      address: 127.0.0.1
      ports: $PORT_MIN-$PORT_MAX
EOF
            start "sbc-media-$engine" "$BIN/sbc-media" --config "$cfg"
            search "sbc-media-$engine" "$PID" --target sbc --rpc "$TMP/media.sock" \
                --metrics "$MEDIA_METRICS" --engine-requested "$engine"
            stop "$PID"
            grep -iE 'packet engine' "$RESULTS/sbc-media-$engine.relay.log" | sed 's/^/   sbc-media log: /' >&2 || true
        done
        ;;
    rtpengine)
        # Userspace forwarding (--table=-1: no kernel module), one worker thread, the
        # whole process on the media CPU; no config file.
        start rtpengine rtpengine --config-file=none --table=-1 --foreground --log-stderr \
            --log-level=4 --interface=127.0.0.1 --listen-ng="$NG" \
            --port-min="$PORT_MIN" --port-max="$PORT_MAX" --num-threads=1 \
            --timeout=3600 --silent-timeout=3600 --delete-delay=0
        search rtpengine "$PID" --target rtpengine --ng "$NG"
        stop "$PID"
        ;;
    raw)
        start rawrelay "$BIN/rawrelay" --listen-a "$RAW_A" --listen-b "$RAW_B" \
            --peer-a "$LOADGEN_A" --peer-b "$LOADGEN_B" --cpu "$MEDIA_CPU" --max-seconds 1200
        search rawrelay "$PID" --target raw --relay-a "$RAW_A" --relay-b "$RAW_B"
        stop "$PID"
        ;;
    direct)
        search direct - --target direct
        ;;
    *)
        echo "unknown system $system (expected sbc, rtpengine, raw, direct)" >&2
        exit 2
        ;;
    esac
done

echo
echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), Linux $(uname -r)"
echo "relay on CPU $MEDIA_CPU, load generator on CPU $LOAD_CPU; trials ${WARMUP}s + ${TRIAL_SECONDS}s, half load ${REPEAT} × ${HALF_SECONDS}s; took $(( $(date +%s) - T0 )) s"
echo
shopt -s nullglob
files=("$RESULTS"/*.json)
if [ ${#files[@]} -eq 0 ]; then
    echo "no results" >&2
    exit 1
fi
# Table order: sbc-media rows, rtpengine, rawrelay, direct.
ordered=()
for f in "$RESULTS"/sbc-media-*.json "$RESULTS"/rtpengine.json "$RESULTS"/rawrelay.json "$RESULTS"/direct.json; do
    [ -f "$f" ] && ordered+=("$f")
done
"$BIN/loadgen" table "${ordered[@]}" | tee "$RESULTS/table.md"
