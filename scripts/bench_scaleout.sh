#!/usr/bin/env bash
# Benchmark of many nodes on one PostgreSQL (a benchmark, not a test: it prints
# figures and asserts nothing about them).
#
#   bash scripts/bench_scaleout.sh [N]      # N inputs per job, default 20,000
#
# In one run, on this machine:
#   1. SQLite, one node (`--role all`, the single-node default), then
#      PostgreSQL with one api node and 1, 2 and 3 worker processes;
#   2. for each: a source job of N inputs on the noop model (the engine's and
#      the store's own cost) and one of N short texts on a cheap text model (the
#      real MiniLM tokenizer in front of a fixture graph, as in bench_jobs.sh),
#      timed from submit to COMPLETED: end-to-end items/s;
#   3. for each: 40 one-input jobs submitted one after the other, timed from
#      submit to their first result line: p50 / p99 submit-to-first-result;
#   4. the store's own ceiling: `store_bench` (claims/s, records/s, inputs/s,
#      PostgreSQL beside SQLite).
# On 2 cores the workers share the CPU with PostgreSQL and each other: more
# workers do not add compute, so read the figures as what the store and the
# nodes sustain, not as a scaling curve.
#
# PostgreSQL: SLUICE_BENCH_POSTGRES (a server URL whose user may create
# databases), default postgres://postgres@127.0.0.1:5432/postgres. Each
# configuration gets a database of its own, dropped at the end.
# Needs: cargo, python3, curl; ONNX Runtime set up (bash scripts/setup.sh).
set -euo pipefail

N="${1:-20000}"
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash scripts/bench_scaleout.sh [N]   (N: inputs per job, default 20000)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
say() { printf '[bench_scaleout] %s\n' "$*" >&2; }
PG="${SLUICE_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"

SAMPLE="$ROOT/data/texts/sample.jsonl"
source "$ROOT/scripts/lib/text_ids_model.sh"
check_bench_files
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.sluice/onnxruntime/lib/libonnxruntime.so.1.32.0}"

say "building the release binary and store_bench"
cargo build --release -q -p sluice-cli
cargo build --release -q -p sluice-store --example store_bench
BIN="$ROOT/target/release/sluice"

WORK="$(mktemp -d -t sluice-bench-scaleout.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/models/noop" "$WORK/models/text-ids" "$WORK/src"
cp "$ROOT/models/noop/model.toml" "$WORK/models/noop/model.toml"
write_text_ids_model "$WORK/models"

python3 - "$BIN" "$WORK" "$SAMPLE" "$N" "$PG" <<'PY'
import json, os, signal, socket, subprocess, sys, time, urllib.parse, urllib.request

bin_, work, sample, n, pg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
models, src = os.path.join(work, "models"), os.path.join(work, "src")

# Inputs: N tensors for noop, N short texts.
with open(os.path.join(src, "noop.jsonl"), "w") as f:
    f.writelines(json.dumps({"id": f"n{i}", "tensor": [float(i % 7), 0.5]}) + "\n" for i in range(n))
texts = [json.loads(l)["text"][:80] for l in open(sample, encoding="utf-8") if l.strip()]
with open(os.path.join(src, "texts.jsonl"), "w") as f:
    f.writelines(json.dumps({"id": f"t{i}", "text": texts[i % len(texts)]}) + "\n" for i in range(n))

def psql_url(db):
    u = urllib.parse.urlsplit(pg)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + db, u.query, ""))

def admin(sql):
    subprocess.run(["psql", "-q", "-d", pg, "-c", sql], check=True, stdout=subprocess.DEVNULL)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def call(base, method, path, body=None, raw=False):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read()
        return text if raw else json.loads(text)

def start(name, role, store):
    port = free_port()
    args = [bin_, "serve", "--models", models, "--data-dir", os.path.join(work, "data-" + name),
            "--listen", f"127.0.0.1:{port}", "--no-grpc", "--source-root", src, "--node-id", name, "--role", role]
    if store:
        args += ["--store", store]
    log = open(os.path.join(work, name + ".log"), "w")
    p = subprocess.Popen(args, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            call(base, "GET", "/readyz")
            return p, base
        except Exception:
            if p.poll() is not None:
                sys.exit(f"{name} exited:\n" + open(os.path.join(work, name + ".log")).read())
            time.sleep(0.1)
    sys.exit(f"{name} never became ready")

def run_job(base, model, file):
    t0 = time.monotonic()
    job = call(base, "POST", "/v1/jobs", {"model": model, "source": os.path.join(src, file)})
    while True:
        j = call(base, "GET", f"/v1/jobs/{job['id']}")
        if j["status"] not in ("SUBMITTED", "IN_PROGRESS"):
            break
        time.sleep(0.05)
    wall = time.monotonic() - t0
    assert j["status"] == "COMPLETED" and j["counts"]["completed"] == n, j
    return n / wall

def first_result_latency(base, k=40):
    lat = []
    for i in range(k):
        t0 = time.monotonic()
        job = call(base, "POST", "/v1/jobs", {"model": "noop", "inputs": {f"x{i}": [1.0, 2.0]}})
        while not call(base, "GET", f"/v1/jobs/{job['id']}/results?limit=1", raw=True).strip():
            time.sleep(0.002)
        lat.append((time.monotonic() - t0) * 1000)
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]

rows = []
configs = [("sqlite, 1 node", 0)] + [(f"postgres, api + {w} worker{'s' if w > 1 else ''}", w) for w in (1, 2, 3)]
for label, workers in configs:
    procs, store, db = [], None, None
    try:
        if workers:
            db = f"sluice_bench_{os.getpid()}_{workers}"
            admin(f"CREATE DATABASE {db}")
            store = psql_url(db)
            procs.append(start("api", "api", store))
            for w in range(workers):
                procs.append(start(f"worker{w + 1}", "worker", store))
        else:
            procs.append(start("single", "all", None))
        base = procs[0][1]
        print(f"[bench_scaleout] {label}: noop job", file=sys.stderr)
        noop = run_job(base, "noop", "noop.jsonl")
        print(f"[bench_scaleout] {label}: text job", file=sys.stderr)
        text = run_job(base, "text-ids", "texts.jsonl")
        p50, p99 = first_result_latency(base)
        rows.append((label, noop, text, p50, p99))
    finally:
        for p, _ in procs:
            p.send_signal(signal.SIGTERM)
        for p, _ in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        if db:
            admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

print()
print(f"{n:,} inputs per job; end to end = submit to COMPLETED; latency = submit of a one-input job to its first result")
print(f"{'configuration':<30} {'noop items/s':>13} {'text items/s':>13} {'p50 ms':>8} {'p99 ms':>8}")
for label, noop, text, p50, p99 in rows:
    print(f"{label:<30} {noop:>13,.0f} {text:>13,.0f} {p50:>8.1f} {p99:>8.1f}")
base_noop, base_text = rows[0][1], rows[0][2]
print()
print("ratios to the SQLite single node (noop / text):")
for label, noop, text, _, _ in rows[1:]:
    print(f"  {label:<28} {noop / base_noop:5.2f} / {text / base_text:5.2f}")
PY

echo
say "the store's own ceiling (store_bench, 100,000 items, 3 clients)"
SLUICE_TEST_POSTGRES="$PG" "$ROOT/target/release/examples/store_bench" 100000 3
