#!/usr/bin/env bash
# The project's whole test run: the command the README gives and .ci/run runs.
#
#   bash scripts/test.sh
#
# Steps, in order, each announced by a banner; the first failure stops the run:
# formatting, clippy (warnings are errors), build of every binary, the sans-IO
# boundary, `cargo test --workspace`, the systemd units, and a short fuzz run of every
# fuzz target. Environment:
#   CARGO_TARGET_DIR  default ~/.cache/sbc/target: outside the clone, so a fresh CI
#                     clone reuses the last build instead of starting from nothing
#   FUZZ_SECONDS      seconds per fuzz target (default 15; 0 skips the fuzz step)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SBC_ROOT"
sbc_target_dir

start=$SECONDS
FUZZ_SECONDS=${FUZZ_SECONDS:-15}
# Debian packages the steps need beyond the machine's Rust toolchain and gcc: none yet
# (systemd-analyze and g++ are installed by the scripts that use them, if missing).
need_apt

echo "toolchain: $(rustc --version); CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

banner "format (cargo fmt --check)"
cargo fmt --all -- --check
# The fuzz crate is its own workspace: check its targets too.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
step_done

banner "lint (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings
step_done

banner "build (cargo build --workspace --bins)"
cargo build --workspace --bins
step_done

banner "sans-IO boundary (proto/ uses neither tokio nor io_uring)"
# STYLE.md: protocol code in proto/ is fed bytes and time; the shells own the I/O.
if matches=$(grep -rnE '(^|[^A-Za-z0-9_])(tokio|io_uring|tokio_uring)::|extern crate (tokio|io_uring)' \
    --include='*.rs' control-plane/src/proto data-plane/src/proto 2>/dev/null); then
    printf '%s\n' "$matches"
    die "proto/ must not use tokio or io_uring (see the lines above)"
fi
echo "ok"
step_done

banner "test (cargo test --workspace)"
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace 2>&1 | tee "$test_log"
step_done

banner "systemd units (scripts/verify-systemd.sh)"
bash scripts/verify-systemd.sh "$CARGO_TARGET_DIR/debug"
step_done

if ((FUZZ_SECONDS > 0)); then
    banner "fuzz smoke (scripts/fuzz-smoke.sh, ${FUZZ_SECONDS}s per target)"
    FUZZ_SECONDS=$FUZZ_SECONDS bash scripts/fuzz-smoke.sh
    step_done
fi

# Sum of every `test result:` line of cargo test (unit, integration and doc tests), as
# the last line, so the run closes on what the test runner counted.
read -r passed failed ignored < <(
    sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$test_log" |
        awk '{ p += $1; f += $2; i += $3 } END { print p + 0, f + 0, i + 0 }'
)
printf '\nall steps passed in %s\n' "$(elapsed $((SECONDS - start)))"
printf 'tests: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$ignored"
