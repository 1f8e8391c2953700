#!/usr/bin/env bash
# Run every cargo-fuzz target in fuzz/ for a short while; fail on any crash.
#
#   scripts/fuzz-smoke.sh [TARGET...]        (default: every target `cargo fuzz list` shows)
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh    (seconds per target, default 20)
#
# On the stable toolchain: cargo-fuzz builds the targets with nightly-only flags
# (-Zsanitizer=address, and -Cpasses=sancov-module with -Cllvm-args for coverage). The
# stable rustc accepts them when RUSTC_BOOTSTRAP=1 is set, which this script does for
# cargo-fuzz's build only (never for the workspace build). That works because the
# stable x86_64-unknown-linux-gnu toolchain already ships the AddressSanitizer runtime;
# libfuzzer-sys compiles libFuzzer itself with the system C++ compiler (g++). No
# nightly toolchain and no -Zbuild-std are needed. cargo-fuzz itself comes from
# crates.io (`cargo install cargo-fuzz --locked`), installed here when missing.
#
# Inputs: the committed corpus fuzz/corpus/<target>/ is read but never written; new
# inputs libFuzzer finds go to a temporary directory that is deleted afterwards (grow
# the committed corpus deliberately, e.g. with `cargo fuzz cmin`). Builds go to
# $CARGO_TARGET_DIR/fuzz (default ~/.cache/sbc/target/fuzz): the first build of a fresh
# machine takes ~6 minutes (sbc-shared's dependencies under ASan), later ones seconds.
#
# A crash, panic, sanitizer report, leak or an input taking over 10 s fails the run;
# libFuzzer saves the input in fuzz/artifacts/<target>/ and the reproducer command is
# printed. Once fixed, copy that file into fuzz/corpus/<target>/ so that
# shared/tests/fuzz_corpus.rs replays it on every `cargo test`.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
sbc_target_dir

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
CARGO_FUZZ_VERSION=0.13.2
[[ $FUZZ_SECONDS =~ ^[1-9][0-9]*$ ]] || die "FUZZ_SECONDS must be a positive whole number, got '$FUZZ_SECONDS'"

need_cmd g++ g++
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

cd "$SBC_ROOT/fuzz"
fuzz_target_dir="$CARGO_TARGET_DIR/fuzz"
export RUSTC_BOOTSTRAP=1

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
((${#targets[@]} > 0)) || die "no fuzz targets found in fuzz/"

echo "$(cargo fuzz --version), $(rustc --version), ${FUZZ_SECONDS}s per target: ${targets[*]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

summary=()
status=0
for target in "${targets[@]}"; do
    corpus="corpus/$target"
    [[ -d $corpus ]] || die "fuzz/$corpus is missing: every target needs seeds"
    mkdir -p "$work/$target"
    log="$work/$target.log"
    echo "--- $target: building and fuzzing for ${FUZZ_SECONDS}s"
    # The first corpus dir is where libFuzzer writes new inputs; the committed one is
    # only read. -timeout: one input running longer than that counts as a failure.
    if cargo fuzz run --target-dir "$fuzz_target_dir" "$target" "$work/$target" "$corpus" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 || true)
        corp=$(grep -o 'corp: [0-9]*' "$log" | tail -n1 || true)
        summary+=("$target: ok, ${runs:-?} runs in ${FUZZ_SECONDS}s (${cov:-cov: ?}, ${corp:-corp: ?} inputs)")
    else
        status=1
        if grep -qE 'Test unit written to|^==[0-9]+==' "$log"; then
            # The panic message or sanitizer report, then cargo-fuzz's summary of the
            # failing input; the stack traces stay in the log (rerun to see them).
            grep -E -A4 'panicked at' "$log" | head -n 20 || true
            grep -E '^==[0-9]+==ERROR|^SUMMARY:' "$log" || true
            sed -n '/^Failing input:/,/^Minimize test case/p' "$log"
        else
            tail -n 60 "$log" # the build failed, or libFuzzer refused to start
        fi
        artifact=$(sed -n 's/.*Test unit written to \(\S*\).*/\1/p' "$log" | tail -n1)
        summary+=("$target: FAILED${artifact:+, input saved as ${artifact#"$SBC_ROOT"/}}")
        if [[ -n $artifact ]]; then
            echo "reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir $fuzz_target_dir $target ${artifact#"$SBC_ROOT"/fuzz/})"
        fi
    fi
done

echo "fuzz smoke:"
printf '  %s\n' "${summary[@]}"
exit "$status"
