#!/usr/bin/env bash
# README command (1): on a fresh Debian 12 machine with Rust, install what is missing,
# build, and run both SBC processes with configs/demo.yaml until Ctrl-C.
#
#   scripts/demo.sh            build (release) and run in the foreground
#   DEMO_PROFILE=debug scripts/demo.sh   faster build, slower binaries
#
# Logs go to run/demo/*.log; stop with Ctrl-C (both processes are ended by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sbc/target}"
profile="${DEMO_PROFILE:-release}"
config=configs/demo.yaml

say() { printf '\033[1m== %s\033[0m\n' "$*"; }

# Debian packages the build needs (ring compiles C; curl for the status check below).
missing=()
for pkg in gcc libc6-dev pkg-config curl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

say "building ($profile)"
if [ "$profile" = release ]; then
  cargo build --release --bins
else
  cargo build --bins
fi
bin="$CARGO_TARGET_DIR/$profile"

"$bin/sbc-control" check-config "$config"

mkdir -p run/demo
pids=()
cleanup() {
  say "stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting sbc-media"
"$bin/sbc-media" --config "$config" >>run/demo/media.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S run/demo/media.sock ] && break; sleep 0.1; done

say "starting sbc-control"
"$bin/sbc-control" --config "$config" >>run/demo/control.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:9090/metrics 2>/dev/null | grep -q '^sbc_media_node_up{node="local"} 1' && break
  sleep 0.1
done

"$bin/sbcctl" --config "$config" status
cat <<TXT

The SBC is running (logs: $repo/run/demo/control.log, media.log).
  control metrics:  curl http://127.0.0.1:9090/metrics
  media metrics:    curl http://127.0.0.1:9091/metrics
  status:           $bin/sbcctl --config $config status
  media node:       $bin/sbc-media status --config $config
  reload config:    $bin/sbcctl --config $config reload
There is no browser page yet: the WebSocket/SIP side and the click-to-call page come
with the SIP and click-to-call work. Press Ctrl-C to stop.
TXT
wait -n "${pids[@]}" || true
echo "a process exited; see run/demo/*.log" >&2
