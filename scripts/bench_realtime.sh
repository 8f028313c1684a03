#!/usr/bin/env bash
# Real-time benchmark (issue 4), all in one run on this machine:
#   1. raw ONNX Runtime on the 3-layer MLP (512-2048-2048-512) at batch 32,
#      with the model's own session options;
#   2. 64 concurrent clients on loopback (wrk when installed, else the Rust
#      load generator `sluice loadtest`) sending single-row KServe v2
#      requests (binary tensor extension) to `sluice serve` (MLP, max batch
#      32, max delay 5 ms): items/s, p50/p99 and the mean batch size;
#   3. 8 real-time clients while a large bulk job runs on the same model:
#      their p99 against max delay + one batch execution + 20 ms.
# Usage: bash scripts/bench_realtime.sh [SECONDS] [BULK_ITEMS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
BULK_ITEMS="${2:-60000}"
bash scripts/setup.sh >/dev/null
cargo build --release -q -p sluice-cli
BIN=target/release/sluice
PY=.sluice/venv/bin/python
TMP="$(mktemp -d)"
SERVER=""
trap '[[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT
mkdir -p "$TMP/models"
cp -r models/mlp "$TMP/models/mlp"
PORT="${SLUICE_BENCH_PORT:-18080}"
URL="http://127.0.0.1:$PORT"
"$BIN" serve --models "$TMP/models" --data-dir "$TMP/data" --listen "127.0.0.1:$PORT" --no-grpc 2>"$TMP/server.log" &
SERVER=$!
for _ in $(seq 1 150); do
    curl -sf "$URL/v2/health/ready" >/dev/null && break
    sleep 0.2
done
curl -sf "$URL/v2/health/ready" >/dev/null || { cat "$TMP/server.log"; exit 1; }

stats() { curl -sf "$URL/v1/stats"; }

raw() { "$BIN" loadtest --clients 0 --raw models/mlp --seconds "$SECS" | tee -a "$TMP/raw.txt"; }
echo "== raw ONNX Runtime, batch 32 ($SECS s), before the load"
raw

echo
if command -v wrk >/dev/null; then
    echo "== 64 clients (wrk, 2 threads), single-row v2 requests, $SECS s"
    # The request: JSON header + 512 little-endian float32 values.
    HEADER_LEN="$("$PY" - "$TMP/body.bin" <<'PYEOF'
import json, sys
import numpy as np
head = json.dumps({"inputs": [{"name": "input", "shape": [1, 512], "datatype": "FP32",
                               "parameters": {"binary_data_size": 2048}}],
                   "parameters": {"binary_data_output": True}}).encode()
x = np.random.default_rng(1).uniform(-0.5, 0.5, 512).astype("<f4")
open(sys.argv[1], "wb").write(head + x.tobytes())
print(len(head))
PYEOF
)"
    # warm-up, then the measured run between two /v1/stats snapshots
    BODY_FILE="$TMP/body.bin" HEADER_LEN="$HEADER_LEN" wrk -t2 -c64 -d2s -s scripts/wrk/v2_infer.lua "$URL/v2/models/mlp/infer" >/dev/null
    stats > "$TMP/before.json"
    BODY_FILE="$TMP/body.bin" HEADER_LEN="$HEADER_LEN" wrk -t2 -c64 -d"${SECS}s" --latency \
        -s scripts/wrk/v2_infer.lua "$URL/v2/models/mlp/infer" | tee "$TMP/wrk.txt"
    if grep -q "Non-2xx" "$TMP/wrk.txt"; then echo "error: some requests failed" >&2; exit 1; fi
    stats > "$TMP/after.json"
    echo
    echo "== raw ONNX Runtime, batch 32 ($SECS s), after the load"
    raw
    "$PY" - "$TMP/before.json" "$TMP/after.json" "$TMP/wrk.txt" "$TMP/raw.txt" <<'PYEOF'
import json, re, statistics, sys
b, a = (json.load(open(p))["models"][0] for p in sys.argv[1:3])
batches = a["batches"] - b["batches"]
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", open(sys.argv[3]).read()).group(1))
raws = [float(x) for x in re.findall(r"raw ONNX Runtime ([\d.]+)", open(sys.argv[4]).read())]
raw = statistics.mean(raws)
print()
print(f"sluice (64 clients): {rate:.1f} items/s, mean batch size "
      f"{(a['batched_items'] - b['batched_items']) / max(batches, 1):.2f}, "
      f"mean batch execution {(a['run_seconds'] - b['run_seconds']) * 1e3 / max(batches, 1):.2f} ms")
print(f"raw ONNX Runtime at batch 32: {' / '.join(f'{r:.1f}' for r in raws)} items/s (before / after)")
print(f"sluice / raw: {100 * rate / raw:.1f}% of the mean, "
      f"{100 * rate / max(raws):.1f}% of the best")
PYEOF
else
    echo "== 64 clients (sluice loadtest; install wrk for a lighter client), $SECS s"
    "$BIN" loadtest --server "$URL" --model mlp --clients 64 --seconds "$SECS"
fi

echo
echo "== 8 real-time clients while a bulk job of $BULK_ITEMS inputs runs on the same model"
"$BIN" loadtest --server "$URL" --model mlp --clients 8 --seconds "$SECS" --bulk-items "$BULK_ITEMS"
