#!/usr/bin/env bash
# Browser test of the dashboard: starts `sluice serve` on a free loopback port
# with the repository's models, submits 5,000 texts to minilm-l6, and runs
# tests/browser/dashboard.mjs in headless Debian Chromium (playwright-core):
# the job's progress must advance, the batch-size and throughput charts must
# render, nothing may be fetched from outside the server, and the cancel
# button must cancel the job. Writes out/dashboard.png.
#
# Needs: /usr/bin/chromium (apt-get install -y chromium), node + npm,
# ONNX Runtime and the models (bash scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  echo "browser_test: $CHROMIUM is missing; install it with: apt-get update && apt-get install -y chromium" >&2
  exit 1
fi
[ -f models/minilm-l6/model.onnx ] || { echo "browser_test: models/minilm-l6 is not built; run bash scripts/setup.sh" >&2; exit 1; }

# Always (re)build: a stale binary would test an old dashboard. A no-op when up to date.
# PROFILE=debug (what scripts/test.sh uses) reuses the test build instead of a release build.
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build --release -q -p sluice-cli
else
  cargo build -q -p sluice-cli
fi
SLUICE="target/$PROFILE/sluice"
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A private model repository: minilm-l6 by link, and a copy of noop so the
# bench results kept for the dashboard land in the temporary folder.
mkdir -p "$WORK/models/noop"
ln -s "$ROOT/models/minilm-l6" "$WORK/models/minilm-l6"
cp models/noop/model.toml "$WORK/models/noop/"
"$SLUICE" bench --model "$WORK/models/noop" --batch-sizes 1,8,32,64 --seconds 0.3 >/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
SLUICE_LOG=${SLUICE_LOG:-warn} "$SLUICE" serve --models "$WORK/models" --data-dir "$WORK/data" \
  --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 150); do
  if curl -sf "$BASE/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/server.log" >&2; echo "browser_test: the server died" >&2; exit 1; fi
  sleep 0.2
done
curl -sf "$BASE/readyz" >/dev/null || { cat "$WORK/server.log" >&2; echo "browser_test: the server is not ready" >&2; exit 1; }

# Enough to stay in progress for several seconds even on a fast machine.
N=${BROWSER_TEST_TEXTS:-5000}
# Cycle the sample texts to N lines (ids come from line numbers).
python3 - "$N" data/texts/sample.jsonl "$WORK/texts.jsonl" <<'PY'
import json, sys
n, src, dst = int(sys.argv[1]), sys.argv[2], sys.argv[3]
texts = [json.loads(l)["text"] for l in open(src, encoding="utf-8") if l.strip()]
with open(dst, "w", encoding="utf-8") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"t{i}", "text": texts[i % len(texts)]}) + "\n")
PY
JOB=$("$SLUICE" jobs --server "$BASE" submit --model minilm-l6 --input "$WORK/texts.jsonl" 2>/dev/null | tail -n 1)
[ -n "$JOB" ] || { echo "browser_test: job submission failed" >&2; exit 1; }
echo "browser_test: job $JOB ($N texts) on $BASE"

mkdir -p out
node tests/browser/dashboard.mjs "$BASE" "$JOB" minilm-l6 "$ROOT/out/dashboard.png"
