#!/usr/bin/env bash
# Property-based API tests: Schemathesis (PyPI, in .sluice/venv) generates
# requests from GET /openapi.json and sends them to a real `sluice serve` on a
# free loopback port. Fails on any 5xx, any status code, content type or body
# the document does not declare. Bounded in time: API_FUZZ_SECONDS (default
# 150) for the generated phases. scripts/test.sh runs it; run it alone with
#   bash scripts/api_fuzz.sh
# Needs: bash scripts/setup.sh (venv with schemathesis, ONNX Runtime, models).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ST="$ROOT/.sluice/venv/bin/schemathesis"
[ -x "$ST" ] || { echo "api_fuzz: $ST is missing; run bash scripts/setup.sh" >&2; exit 1; }
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then cargo build --release -q -p sluice-cli; else cargo build -q -p sluice-cli; fi
SLUICE="$ROOT/target/$PROFILE/sluice"

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The models a user serves: text, image, tensor and no-op; a source root with a real file.
mkdir -p "$WORK/models" "$WORK/sources"
for m in minilm-l6 nanodet-m mlp noop; do ln -s "$ROOT/models/$m" "$WORK/models/$m"; done
head -n 50 data/texts/sample.jsonl > "$WORK/sources/texts.jsonl"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); GRPC_PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
SLUICE_LOG=${SLUICE_LOG:-warn} "$SLUICE" serve --models "$WORK/models" --data-dir "$WORK/data" \
  --listen "127.0.0.1:$PORT" --grpc-listen "127.0.0.1:$GRPC_PORT" --source-root "$WORK/sources" \
  --max-body-mb 8 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do
  curl -sf "$BASE/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; echo "api_fuzz: the server died" >&2; exit 1; }
  sleep 0.2
done
curl -sf "$BASE/readyz" >/dev/null || { cat "$WORK/server.log" >&2; echo "api_fuzz: the server is not ready" >&2; exit 1; }

SECONDS_BUDGET=${API_FUZZ_SECONDS:-150}
echo "[api_fuzz] schemathesis against $BASE/openapi.json for up to ${SECONDS_BUDGET}s"
status=0
SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$ROOT/tests/api" "$ST" --no-color \
  --config-file "$ROOT/tests/api/schemathesis.toml" run "$BASE/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-time "$SECONDS_BUDGET" --workers 2 --generation-database none \
  ${API_FUZZ_SEED:+--seed "$API_FUZZ_SEED"} >"$WORK/schemathesis.log" 2>&1 || status=$?
# Every failure and error, and the summary; the full log only when it failed.
sed -n '/^=* \(FAILURES\|ERRORS\) =*$/,$p;/SUMMARY/,$p' "$WORK/schemathesis.log" | awk '!seen[$0]++' | tail -n 80
if [ -n "${API_FUZZ_LOG:-}" ]; then cp "$WORK/schemathesis.log" "$API_FUZZ_LOG"; fi
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "api_fuzz: the server died during the run:" >&2; tail -n 50 "$WORK/server.log" >&2; exit 1
fi
# Errors (timeouts, dropped connections) are failures too: Schemathesis's exit
# status does not count them.
if grep -Eq '^ *[0-9]+ generated, .*[0-9]+ errored' "$WORK/schemathesis.log"; then
  echo "api_fuzz: requests errored (timeouts or dropped connections)" >&2
  status=1
fi
if [ "$status" != 0 ]; then
  cat "$WORK/schemathesis.log" >&2
  echo "api_fuzz: schemathesis found failures (exit $status)" >&2
  exit 1
fi
echo "[api_fuzz] ok"
