#!/usr/bin/env bash
# Engine benchmark (figures, not a test): in one run, Sluice against raw ONNX
# Runtime on the same batches, batch size and threads, for NanoDet (batch 8)
# and MiniLM (batch 32), then items/s through the queue and batcher alone with
# the no-op runtime (batch 64). Medians of alternating repeats.
#
#   bash scripts/bench_engine.sh [REPEATS]     # default 5
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${1:-5}"
bash scripts/setup.sh >/dev/null
cargo build --release -q -p sluice-cli
SLUICE=target/release/sluice
$SLUICE bench --model models/nanodet-m --batch-sizes 8 --raw --repeat "$REPEAT" --seconds 4
echo
# MiniLM batches of 32 long texts take up to a second each: measure longer.
$SLUICE bench --model models/minilm-l6 --batch-sizes 32 --raw --repeat 3 --seconds 15
echo
$SLUICE bench --model models/noop --batch-sizes 1,64 --repeat 3 --seconds 2
