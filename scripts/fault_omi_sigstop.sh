#!/usr/bin/env bash
# Fault check (issue 10, finding 7), not a unit test: it stops a real OMI worker with SIGSTOP.
#
#   bash scripts/fault_omi_sigstop.sh [--hang-timeout-s 5] [--items 3000]
#
# Serves a copy of models/mlp-omi (the Python MLP worker) with hang_timeout_s set, runs a job,
# SIGSTOPs the worker in the middle of it, and checks, literally:
#   1. a real-time request with timeout_ms 2000 sent during the stall is answered 504 within ~2-3 s;
#   2. the stopped worker is killed and replaced within the hang timeout (plus the restart);
#   3. the job completes with every input exactly once and none failed.
# Needs `bash scripts/setup.sh` (venv with onnxruntime + the SDK, models/mlp/model.onnx) and
# builds target/debug/sluice. Exit status 0 only when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
HANG=5
ITEMS=3000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --hang-timeout-s) HANG="$2"; shift 2 ;;
        --items) ITEMS="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
PY="$ROOT/.sluice/venv/bin/python"
[[ -x "$PY" && -f models/mlp/model.onnx ]] || { echo "run bash scripts/setup.sh first" >&2; exit 2; }
cargo build -q -p sluice-cli
SLUICE="$ROOT/target/debug/sluice"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/models/mlp-omi"
cat > "$WORK/models/mlp-omi/model.toml" <<EOF
runtime = "omi"
max_batch_size = 32
max_batch_delay_ms = 5
instances = 1
group_by_length = false
[processing]
type = "bytes"
[omi]
command = ["$PY", "$ROOT/sdk/python/examples/mlp_worker.py", "$ROOT/models/mlp/model.onnx"]
env = { OMI_THREADS = "2" }
hang_timeout_s = $HANG
restart_backoff_ms = 200
EOF
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
"$SLUICE" serve --models "$WORK/models" --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --no-grpc \
    > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 600); do
    curl -sf "$URL/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "$URL/readyz" >/dev/null || { echo "server did not become ready"; tail -20 "$WORK/server.log"; exit 1; }

worker_pid() { pgrep -P "$SERVER_PID" -f mlp_worker.py | head -1; }
now() { date +%s.%N; }
elapsed() { "$PY" -c "print(f'{$2 - $1:.2f}')"; }

# One 512-float32 row, base64, and a job of ITEMS copies under distinct keys.
ROW="$("$PY" -c 'import base64, struct; print(base64.b64encode(struct.pack("<512f", *[i / 512 for i in range(512)])).decode())')"
"$PY" - "$ITEMS" "$ROW" > "$WORK/job.json" <<'EOF'
import json, sys
n, row = int(sys.argv[1]), sys.argv[2]
print(json.dumps({"model": "mlp-omi", "inputs": {f"k{i:05}": {"input": {"base64": row}} for i in range(n)}}))
EOF
JOB="$(curl -sf "$URL/v1/jobs" -H 'content-type: application/json' --data-binary @"$WORK/job.json" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
counts() { curl -sf "$URL/v1/jobs/$JOB" | "$PY" -c 'import json,sys; j=json.load(sys.stdin); c=j["counts"]; print(j["status"], c["total"], c["completed"], c["failed"], c["pending"])'; }
echo "job $JOB with $ITEMS inputs; hang_timeout_s = $HANG"

# Wait until the job is under way, then stop the worker.
for _ in $(seq 1 600); do
    read -r _ _ done _ _ < <(counts)
    [[ "$done" -gt 100 ]] && break
    sleep 0.05
done
OLD="$(worker_pid)"
kill -STOP "$OLD"
T_STOP="$(now)"
echo "SIGSTOP worker $OLD with $(counts | awk '{print $3}') of $ITEMS completed"

FAIL=0
check() { if [[ "$1" == ok ]]; then echo "PASS: $2"; else echo "FAIL: $2"; FAIL=1; fi; }

# 1. A real-time request during the stall, timeout_ms 2000.
sleep 1
T0="$(now)"
CODE="$(curl -s -o "$WORK/rt.json" -w '%{http_code}' --max-time 60 "$URL/v1/models/mlp-omi/infer" \
    -H 'content-type: application/json' -d "{\"inputs\": [{\"input\": {\"base64\": \"$ROW\"}}], \"timeout_ms\": 2000}")"
RT="$(elapsed "$T0" "$(now)")"
echo "real-time request 1 s into the stall: HTTP $CODE after $RT s: $(head -c 200 "$WORK/rt.json")"
[[ "$CODE" == 504 ]] && "$PY" -c "import sys; sys.exit(0 if $RT <= 3.0 else 1)" && r=ok || r=no
check "$r" "real-time request answered 504 at its deadline (2 s; took $RT s)"

# 2. The stopped worker is replaced within the hang timeout (plus the restart itself).
NEW=""
for _ in $(seq 1 1200); do
    NEW="$(worker_pid || true)"
    [[ -n "$NEW" && "$NEW" != "$OLD" ]] && break
    NEW=""
    sleep 0.05
done
T_NEW="$(elapsed "$T_STOP" "$(now)")"
GONE=no
[[ ! -e "/proc/$OLD" ]] || grep -q ') Z ' "/proc/$OLD/stat" 2>/dev/null || GONE=still-there
[[ "$GONE" == no ]] && GONE=yes
echo "replacement worker: ${NEW:-none} started $T_NEW s after SIGSTOP; stopped worker $OLD gone: $GONE"
[[ -n "$NEW" && "$GONE" == yes ]] && "$PY" -c "import sys; sys.exit(0 if $T_NEW <= $HANG + 10 else 1)" && r=ok || r=no
check "$r" "stopped worker killed and replaced within hang_timeout_s ($HANG s) + restart (took $T_NEW s)"

# 3. The job completes, every input once, none failed.
for _ in $(seq 1 1200); do
    read -r status _ _ _ _ < <(counts)
    [[ "$status" == COMPLETED || "$status" == FAILED || "$status" == CANCELED ]] && break
    sleep 0.1
done
read -r status total done failed pending < <(counts)
T_END="$(elapsed "$T_STOP" "$(now)")"
echo "job: $status total=$total completed=$done failed=$failed pending=$pending ($T_END s after SIGSTOP)"
curl -sf "$URL/v1/jobs/$JOB/results?limit=100000" > "$WORK/results.jsonl"
read -r lines unique ok < <("$PY" - "$WORK/results.jsonl" <<'EOF'
import json, sys
keys, ok = [], 0
for line in open(sys.argv[1]):
    if line.strip():
        r = json.loads(line)
        keys.append(r["key"])
        ok += "output" in r and "error" not in r
print(len(keys), len(set(keys)), ok)
EOF
)
echo "results: $lines lines, $unique distinct keys, $ok with an output"
[[ "$status" == COMPLETED && "$done" == "$ITEMS" && "$failed" == 0 && "$lines" == "$ITEMS" && "$unique" == "$ITEMS" && "$ok" == "$ITEMS" ]] && r=ok || r=no
check "$r" "job completed with every input exactly once and none failed"

grep -E "OMI worker (lost|restarted)" "$WORK/server.log" | sed -E 's/\x1b\[[0-9;]*m//g' | head -5 || true
exit "$FAIL"
