#!/usr/bin/env bash
# wardgate's coverage-guided fuzzing (cargo-fuzz / libFuzzer on the nightly toolchain); the
# targets and the results of their long runs are described in fuzz/README.md.
#
#   scripts/fuzz.sh TARGET [SECONDS]   the long run: TARGET until 10 million executions or
#                                      SECONDS (default 1800) have passed, whichever comes first;
#                                      new inputs go to fuzz/work/TARGET (not committed)
#   scripts/fuzz.sh --merge TARGET     fold fuzz/work/TARGET into the committed corpus, keeping
#                                      only inputs that add coverage (libFuzzer -merge=1), then
#                                      minimise the corpus (cargo fuzz cmin)
#   scripts/fuzz.sh --smoke [SECONDS]  every target for SECONDS each (default 5), after replaying
#                                      its committed corpus and regressions; what scripts/test.sh
#                                      runs, so a target that fails on known input fails CI
#   scripts/fuzz.sh --build            build the targets only
#   scripts/fuzz.sh --list             the target names
#
# One build for all modes: release, debug assertions and overflow checks on, no sanitizer (the
# crate forbids unsafe code; ASan would only slow the run), 16 codegen units (a build of
# minutes instead of tens of minutes on a small machine, for slightly slower execution).
# A crash leaves its input in fuzz/artifacts/TARGET/; a fixed crash is committed under
# fuzz/regressions/TARGET/ with a regression test in the normal test suite.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

FLAGS=(-O -a -s none --codegen-units 16)
# build.rs stamps the git revision and re-runs on every commit, which would rebuild the whole
# instrumented crate after each one; the fuzz build does not need the revision.
export WARDGATE_GIT_REV="${WARDGATE_GIT_REV:-fuzz}"
TARGETS=(path_normalize spiffe_id bundle_compile policy_reference check_request forwarded_cert
    decision_log test_cases)
# Every run: a 10 s timeout per input (a runaway is a finding), 2 GiB of memory at most.
LIBFUZZER=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

build() {
    cargo +nightly fuzz build "${FLAGS[@]}" >&2
}

known() {
    local t
    for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && return 0; done
    echo "fuzz.sh: unknown target '$1' (known: ${TARGETS[*]})" >&2
    exit 2
}

# Run TARGET with a scratch corpus first (libFuzzer writes new inputs into the first
# directory), then the committed corpus and regressions as read-only seeds.
run() {  # run TARGET SCRATCH_DIR LIBFUZZER_ARGS...
    local target="$1" scratch="$2"
    shift 2
    mkdir -p "$scratch" "corpus/$target"
    local seeds=("corpus/$target")
    [ -d "regressions/$target" ] && seeds+=("regressions/$target")
    cargo +nightly fuzz run "${FLAGS[@]}" "$target" "$scratch" "${seeds[@]}" -- \
        "${LIBFUZZER[@]}" "$@"
}

case "${1:-}" in
    --list)
        printf '%s\n' "${TARGETS[@]}"
        ;;
    --build)
        build
        ;;
    --smoke)
        seconds="${2:-5}"
        build
        scratch="$(mktemp -d)"
        trap 'rm -rf "$scratch"' EXIT
        for t in "${TARGETS[@]}"; do
            echo "== fuzz smoke: $t (${seconds}s after corpus replay)" >&2
            run "$t" "$scratch/$t" -max_total_time="$seconds" 2>"$scratch/$t.log" || {
                tail -n 40 "$scratch/$t.log" >&2
                echo "fuzz smoke: $t FAILED (input in fuzz/artifacts/$t/)" >&2
                exit 1
            }
            grep -E '^stat::number_of_executed_units|Done [0-9]+ runs' "$scratch/$t.log" | tail -n 1 >&2 || true
        done
        ;;
    --merge)
        target="${2:?usage: scripts/fuzz.sh --merge TARGET}"
        known "$target"
        build
        cargo +nightly fuzz run "${FLAGS[@]}" "$target" "corpus/$target" "work/$target" -- -merge=1 >&2
        cargo +nightly fuzz cmin "${FLAGS[@]}" "$target" "corpus/$target" >&2
        ;;
    ""|-*)
        sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
    *)
        target="$1"
        seconds="${2:-1800}"
        known "$target"
        build
        run "$target" "work/$target" -max_total_time="$seconds" -runs=10000000
        ;;
esac
