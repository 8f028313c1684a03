#!/usr/bin/env bash
# Benchmark (not a test): the 3-layer MLP in a Python OMI worker (onnxruntime),
# through Sluice vs the same worker's raw batch throughput, in one run.
# Prints items/s of both and the ratio (target: Sluice >= 80% of raw).
#   bash scripts/bench_omi.sh [--seconds 10]
# Needs `bash scripts/setup.sh` (venv with onnxruntime + the SDK, models/mlp/model.onnx).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo run --release -q -p sluice-engine --example bench_omi -- "$@"
