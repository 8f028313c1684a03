#!/usr/bin/env bash
# Fault test: the job store on a full disk (issue 10, finding 2), reproduced
# literally: the data dir is a small tmpfs, a job runs and takes uploads until
# SQLite reports SQLITE_FULL, then:
#   1. writes answer 503 with Retry-After and a generic message (no 500, no
#      internal text such as "begin_with at non-zero transaction depth");
#   2. /readyz answers 503 saying the store cannot write (class disk_full);
#      /healthz stays 200 (the process is alive);
#   3. once space is freed, /readyz turns 200 again (probe), new jobs are
#      accepted and the running job finishes, without a restart;
#   4. after a restart the job is COMPLETED with exactly one result per input
#      and `PRAGMA integrity_check` is ok.
#
# Needs root (mount -t tmpfs), curl, python3. SLUICE=path/to/sluice chooses
# the binary (default: target/debug/sluice, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "$(id -u)" != 0 ]; then
  echo "fault_disk_full: needs root to mount a tmpfs (the Rust test" \
    "crates/sluice-server/tests/jobs_integrity.rs covers the same without root)" >&2
  exit 1
fi
SLUICE=${SLUICE:-target/debug/sluice}
case $SLUICE in /*) ;; *) SLUICE=$ROOT/$SLUICE ;; esac
if [ ! -x "$SLUICE" ]; then
  cargo build -q -p sluice-cli
fi
SIZE=${SIZE:-16m}

WORK=$(mktemp -d)
DATA=$WORK/data
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill -9 "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  umount "$DATA" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

FAILS=0
check() { # check WHAT CONDITION...
  local what=$1
  shift
  if "$@"; then echo "ok    $what"; else echo "FAIL  $what"; FAILS=$((FAILS + 1)); fi
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }

mkdir -p "$DATA" "$WORK/models/noop"
mount -t tmpfs -o size="$SIZE" tmpfs "$DATA"
cp models/noop/model.toml "$WORK/models/noop/"
# Ballast: freed later to give the store room again.
dd if=/dev/zero of="$DATA/ballast" bs=1M count=4 status=none
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT

start_server() {
  NO_COLOR=1 "$SLUICE" serve --models "$WORK/models" --data-dir "$DATA" --listen "127.0.0.1:$PORT" --no-grpc \
    >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    if curl -fs "$BASE/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "the server never became ready:" >&2
  cat "$WORK/server.log" >&2
  exit 1
}

# Status line, headers and body of a request, in $WORK/resp.{code,headers,body}.
request() { # request METHOD PATH [curl args...]
  local method=$1 path=$2
  shift 2
  curl -s -X "$method" -o "$WORK/resp.body" -D "$WORK/resp.headers" -w '%{http_code}' "$@" "$BASE$path" \
    >"$WORK/resp.code" || echo 000 >"$WORK/resp.code"
}
code() { cat "$WORK/resp.code"; }

chunk() { # chunk N: 1,000 JSONL inputs of 64 floats, keys c<N>-<i>
  python3 - "$1" <<'EOF'
import json, sys
n = int(sys.argv[1])
for i in range(1000):
    print(json.dumps({"key": f"c{n}-{i}", "tensor": [float(i % 97) + 0.25] * 64}))
EOF
}

echo "== sluice on a ${SIZE} tmpfs at $DATA (binary $SLUICE)"
start_server
request POST /v1/jobs -H 'content-type: application/json' -d '{"model":"noop","open":true}'
JOB=$(json "d['id']" <"$WORK/resp.body")
echo "open job $JOB"

# 1. Upload until the store is full; the job runs meanwhile.
ACCEPTED=0
FULL_CODE=""
for n in $(seq 1 400); do
  chunk "$n" >"$WORK/chunk.jsonl"
  request POST "/v1/jobs/$JOB/inputs" -H 'content-type: application/x-ndjson' --data-binary @"$WORK/chunk.jsonl"
  if [ "$(code)" = 200 ]; then
    ACCEPTED=$((ACCEPTED + $(json "d['added']" <"$WORK/resp.body")))
  else
    FULL_CODE=$(code)
    break
  fi
done
echo "accepted $ACCEPTED inputs before the disk filled ($(df -h "$DATA" | tail -1 | awk '{print $3 " used of " $2}'))"
echo "upload answer: $FULL_CODE $(cat "$WORK/resp.body")"
check "the upload that hit the full disk answers 503" [ "$FULL_CODE" = 503 ]
check "  with Retry-After" grep -qi '^retry-after: [1-9]' "$WORK/resp.headers"
check "  with the error code store_unavailable" grep -q '"code":"store_unavailable"' "$WORK/resp.body"
check "  and no internal text" bash -c "! grep -Eqi 'sqlite|transaction|begin_with|database|$DATA' '$WORK/resp.body'"
grep -q 'disk_full' "$WORK/server.log" && echo "server log: $(grep -m1 'disk_full' "$WORK/server.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-300)"

# Fill what is left, so that every write needs space the disk does not have.
dd if=/dev/zero of="$DATA/filler" bs=4k status=none 2>/dev/null || true
for attempt in 1 2 3; do
  request POST /v1/jobs -H 'content-type: application/json' \
    -d "{\"model\":\"noop\",\"inputs\":{$(python3 -c 'print(",".join(f"\"k{i}\":[{i}.5]" for i in range(2000)))')}}"
  echo "POST /v1/jobs on the full disk (attempt $attempt): $(code) $(cat "$WORK/resp.body")"
  check "POST /v1/jobs on the full disk answers 503 (attempt $attempt)" [ "$(code)" = 503 ]
  check "  without 'transaction depth'" bash -c "! grep -q 'transaction depth' '$WORK/resp.body'"
done
sleep 3 # two probe periods: the probe must not call the full store writable
request GET /readyz
echo "/readyz: $(code) $(cat "$WORK/resp.body")"
check "/readyz answers 503 while the disk is full" [ "$(code)" = 503 ]
check "  saying the store cannot write (disk_full)" \
  bash -c "python3 -c 'import json,sys; d=json.load(open(\"$WORK/resp.body\")); sys.exit(not (d[\"store\"][\"writable\"] is False and d[\"store\"][\"last_write_error\"] == \"disk_full\"))'"
request GET /healthz
check "/healthz stays 200 (alive)" [ "$(code)" = 200 ]

# 2. Free space: the store recovers without a restart.
rm -f "$DATA/filler" "$DATA/ballast"
echo "space freed ($(df -h "$DATA" | tail -1 | awk '{print $4}') available)"
READY=""
for _ in $(seq 1 100); do
  request GET /readyz
  if [ "$(code)" = 200 ]; then READY=1; break; fi
  sleep 0.1
done
echo "/readyz: $(code) $(cat "$WORK/resp.body")"
check "/readyz answers 200 again after space is freed" [ -n "$READY" ]
request POST /v1/jobs -H 'content-type: application/json' -d '{"model":"noop","inputs":{"a":[1.0],"b":[2.0]}}'
SMALL=$(json "d.get('id','')" <"$WORK/resp.body" 2>/dev/null || true)
check "POST /v1/jobs answers 201 again" [ "$(code)" = 201 ]
request POST "/v1/jobs/$JOB/close"
check "the open job closes" [ "$(code)" = 200 ]
STATUS=""
for _ in $(seq 1 600); do
  request GET "/v1/jobs/$JOB"
  STATUS=$(json "d['status']" <"$WORK/resp.body")
  [ "$STATUS" = IN_PROGRESS ] || [ "$STATUS" = SUBMITTED ] || break
  sleep 0.1
done
echo "job before the restart: $(json "(d['status'], d['counts'])" <"$WORK/resp.body")"
check "the job completes without a restart" [ "$STATUS" = COMPLETED ]

# 3. Restart (kill -9 is the harshest) and check the job once more.
kill -9 "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
start_server
request GET "/v1/jobs/$JOB"
echo "job after the restart: $(json "(d['status'], d['counts'])" <"$WORK/resp.body")"
check "after the restart the job is COMPLETED" [ "$(json "d['status']" <"$WORK/resp.body")" = COMPLETED ]
check "  with total = the $ACCEPTED accepted inputs" [ "$(json "d['counts']['total']" <"$WORK/resp.body")" = "$ACCEPTED" ]
check "  all completed" [ "$(json "d['counts']['completed']" <"$WORK/resp.body")" = "$ACCEPTED" ]
curl -s "$BASE/v1/jobs/$JOB/results" >"$WORK/results.ndjson"
LINES=$(wc -l <"$WORK/results.ndjson")
KEYS=$(python3 -c 'import json,sys; print(len({json.loads(l)["key"] for l in open(sys.argv[1])}))' "$WORK/results.ndjson")
echo "results: $LINES lines, $KEYS distinct keys"
check "  exactly one result per input" [ "$LINES" = "$ACCEPTED" ] && [ "$KEYS" = "$ACCEPTED" ]
if [ -n "$SMALL" ]; then
  request GET "/v1/jobs/$SMALL"
  check "the job accepted after recovery completes" [ "$(json "d['status']" <"$WORK/resp.body")" = COMPLETED ]
fi
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
if command -v sqlite3 >/dev/null; then
  INTEGRITY=$(sqlite3 "$DATA/sluice.db" 'PRAGMA integrity_check')
else
  INTEGRITY=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("PRAGMA integrity_check").fetchone()[0])' "$DATA/sluice.db")
fi
echo "PRAGMA integrity_check: $INTEGRITY"
check "integrity_check is ok" [ "$INTEGRITY" = ok ]

echo
if [ "$FAILS" = 0 ]; then
  echo "fault_disk_full: all checks passed"
else
  echo "fault_disk_full: $FAILS check(s) FAILED; server log: $(wc -l <"$WORK/server.log") lines"
  tail -n 40 "$WORK/server.log"
  exit 1
fi
