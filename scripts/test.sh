#!/usr/bin/env bash
# The test command: sets up what the tests need (ONNX Runtime library, built
# models; quick when already done), then checks formatting and lints and runs
# the whole test suite against real ONNX Runtime, real models and real data.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
source scripts/lib/postgres.sh
ensure_postgres_for_tests
trap stop_throwaway_postgres EXIT
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "[test] cargo test"
cargo test --workspace --no-fail-fast "$@"

# The Kubernetes manifests against the Kubernetes schemas (kubernetes-validate from PyPI).
echo "[test] Kubernetes manifests (scripts/validate_k8s.sh)"
bash scripts/validate_k8s.sh

# The dashboard in a real browser: Debian's Chromium, installed when missing.
if [[ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
    echo "[test] installing Debian's chromium for the dashboard browser test"
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null
fi
echo "[test] dashboard browser test (scripts/browser_test.sh)"
PROFILE=debug bash scripts/browser_test.sh

# Property-based API tests: Schemathesis against GET /openapi.json on a real
# server (bounded; fails on any 5xx or an answer the document does not describe).
echo "[test] API property tests (scripts/api_fuzz.sh)"
PROFILE=debug API_FUZZ_SECONDS="${API_FUZZ_SECONDS:-120}" bash scripts/api_fuzz.sh
