#!/usr/bin/env bash
# The soak run (issue 13): Envoy + wardgate (10,000 rules) under steady mTLS load for MINUTES
# minutes (default 30, or $SOAK_MINUTES), with a bundle swap every 30 s (every 4th invalid), a
# client SVID rotation every 2 minutes, the decision log on and the admin endpoints scraped
# every 5 s. See benches/soak.rs and docs/performance.md ("Soak").
#
# Release build into target/bench (CARGO_TARGET_DIR), like scripts/bench.sh, then the bench
# executable runs directly with --bench. Results: benches/results/soak.{csv,txt,svg} for runs
# under 30 minutes, benches/results/soak-<N>min.{csv,txt,svg} for 30 minutes and more (so a long
# run does not overwrite the short one the ordinary workflow makes).
# $SOAK_OUT overrides the prefix. Exit status 1 when the soak fails.
#
# Usage: scripts/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-${SOAK_MINUTES:-30}}"
export SOAK_MINUTES="$minutes"
if [ -z "${SOAK_OUT:-}" ]; then
    if [ "$minutes" -ge 30 ]; then
        SOAK_OUT="benches/results/soak-${minutes}min"
    else
        SOAK_OUT="benches/results/soak"
    fi
fi
export SOAK_OUT
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
mkdir -p benches/results

if [ -z "${WARDGATE_ENVOY:-}" ]; then
    WARDGATE_ENVOY="$(bash scripts/install-test-deps.sh | tail -n1)"
    export WARDGATE_ENVOY
fi

echo "== release build of benches/soak.rs into $CARGO_TARGET_DIR"
exe=$(cargo bench --no-run --locked --message-format=json-render-diagnostics --bench soak |
    python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["executable"])' | tail -n1)
[ -n "$exe" ] || { echo "!! benches/soak.rs does not build"; exit 1; }

echo "== soak for $minutes min; results to $SOAK_OUT.{csv,txt,svg}"
"$exe" --bench
