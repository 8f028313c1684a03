#!/usr/bin/env bash
# Benchmark of the jobs server (a benchmark, not a test: it prints figures and
# asserts nothing about them).
#
#   bash scripts/bench_jobs.sh [N]        # N inputs, default 1,000,000
#
# What it does:
#   1. builds the release binary (cargo build --release -p sluice-cli);
#   2. writes N short texts (the first ~60 characters of the lines of
#      data/texts/sample.jsonl, cycled, with unique ids) to a JSONL file in a
#      temporary folder that is the server's --source-root;
#   3. defines a cheap text model in a temporary models folder: the real
#      MiniLM tokenizer (models/minilm-l6/tokenizer.json) in front of the
#      fixture graph crates/sluice-engine/tests/fixtures/text_ids.onnx
#      (input_ids, attention_mask -> last_hidden_state; no token_type_ids),
#      mean pooling, max_batch_size 64 -- so the figures are dominated by the
#      server (ingest, store, scheduler, tokenizer), not by the model;
#   4. starts `sluice serve` under /usr/bin/time -v, submits the file as a
#      `source` job and polls GET /v1/jobs/{id} to measure
#        - ingest rate: inputs/s until the job's total reaches N,
#        - end to end: wall time until COMPLETED and the job's items_per_s,
#   5. stops the server with SIGTERM and reports its peak RSS ("Maximum
#      resident set size" from time -v).
#
# Needs: cargo, python3, curl, and GNU time (/usr/bin/time; Debian package
# `time`, installed with apt-get when missing and running as root).
# ONNX Runtime must be set up (bash scripts/setup.sh).
set -euo pipefail

N="${1:-1000000}"
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash scripts/bench_jobs.sh [N]   (N: number of inputs, default 1000000)" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
say() { printf '[bench_jobs] %s\n' "$*" >&2; }

SAMPLE="$ROOT/data/texts/sample.jsonl"
source "$ROOT/scripts/lib/text_ids_model.sh"
check_bench_files
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
if [[ ! -x /usr/bin/time ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        say "installing GNU time (Debian package 'time')"
        apt-get install -y -qq time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
    else
        echo "/usr/bin/time is missing: install GNU time (apt-get install time)" >&2
        exit 1
    fi
fi

say "building the release binary"
cargo build --release -q -p sluice-cli
BIN="$ROOT/target/release/sluice"

WORK="$(mktemp -d -t sluice-bench-jobs.XXXXXX)"
TIME_PID=""
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        sleep 1
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n "$TIME_PID" ]]; then
        wait "$TIME_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- inputs --------------------------------------------------------------------
mkdir -p "$WORK/src" "$WORK/models/text-ids" "$WORK/data"
INPUT="$WORK/src/texts.jsonl"
say "writing $N texts to $INPUT"
python3 - "$SAMPLE" "$N" "$INPUT" <<'PY'
import json, sys
sample, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
texts = []
with open(sample, encoding="utf-8") as f:
    for line in f:
        line = line.strip()
        if line:
            t = json.loads(line)["text"][:60].strip()
            if t:
                texts.append(t)
with open(out, "w", encoding="utf-8") as f:
    k = len(texts)
    f.writelines(json.dumps({"id": f"t{i}", "text": texts[i % k]}) + "\n" for i in range(n))
PY
say "input file: $(du -h "$INPUT" | cut -f1)"

# --- model ---------------------------------------------------------------------
write_text_ids_model "$WORK/models"

# --- server --------------------------------------------------------------------
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
BASE="http://127.0.0.1:$PORT"
say "starting sluice serve on $BASE"
/usr/bin/time -v -o "$WORK/time.txt" "$BIN" serve --models "$WORK/models" --data-dir "$WORK/data" \
    --listen "127.0.0.1:$PORT" --source-root "$WORK/src" --max-inputs-per-job "$((N > 50000000 ? N : 50000000))" \
    >"$WORK/server.log" 2>&1 &
TIME_PID=$!
for _ in $(seq 1 600); do
    SERVER_PID="$(ps -o pid= --ppid "$TIME_PID" | tr -d ' ' | head -n1 || true)"
    if [[ -n "$SERVER_PID" ]] && curl -fsS "$BASE/readyz" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$TIME_PID" 2>/dev/null; then
        echo "sluice serve exited:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
curl -fsS "$BASE/readyz" >/dev/null || { echo "sluice serve did not become ready" >&2; cat "$WORK/server.log" >&2; exit 1; }

# --- the job -------------------------------------------------------------------
say "submitting the file as a source job and following it"
python3 - "$BASE" "$INPUT" "$N" <<'PY'
import json, sys, time, urllib.request

base, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())

t0 = time.monotonic()
job = call("POST", "/v1/jobs", {"model": "text-ids", "source": path, "tags": ["bench"]})
jid = job["id"]
ingest_s = None
while True:
    job = call("GET", f"/v1/jobs/{jid}")
    now = time.monotonic() - t0
    c = job["counts"]
    if ingest_s is None and c["total"] >= n:
        ingest_s = now
    if job["status"] in ("COMPLETED", "FAILED", "CANCELED", "TIMEDOUT"):
        break
    time.sleep(0.1)
wall = time.monotonic() - t0
if ingest_s is None:
    ingest_s = wall
t = job["timings"]
print()
print(f"inputs                 {n:>12,}")
print(f"job status             {job['status']:>12}   (completed {c['completed']:,}, failed {c['failed']:,})")
print(f"ingest                 {n / ingest_s:>12,.0f} inputs/s   (total reached {n:,} after {ingest_s:.2f} s)")
print(f"end to end (wall)      {n / wall:>12,.0f} items/s    ({wall:.2f} s from submit to {job['status']})")
print(f"end to end (job)       {job['items_per_s'] or 0:>12,.0f} items/s    (items_per_s: first item fed to the end)")
print(f"mean queue / model     {t['mean_queue_ms']:>9.2f} ms / {t['mean_model_ms']:.4f} ms per item")
PY

# --- stop and report memory ------------------------------------------------------
kill -TERM "$SERVER_PID"
wait "$TIME_PID" || true
TIME_PID=""
SERVER_PID=""
rss_kb="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")"
cpu="$(awk -F': ' '/Percent of CPU this job got/ {print $2}' "$WORK/time.txt")"
printf 'server peak RSS         %12s MiB   (Maximum resident set size %s kB; CPU %s)\n' \
    "$(awk -v k="$rss_kb" 'BEGIN { printf "%.1f", k / 1024 }')" "$rss_kb" "$cpu"
printf 'store on disk           %12s\n' "$(du -sh "$WORK/data" | cut -f1)"
