#!/usr/bin/env bash
# Benchmark of object-store sources and sinks (a benchmark, not a test: it
# prints figures and asserts nothing about them).
#
#   bash scripts/bench_objects.sh [N]      # N short texts, default 100,000
#
# In one run, on this machine: `sluice run` over N short texts on a cheap text
# model (the real MiniLM tokenizer in front of a fixture graph, see
# scripts/lib/text_ids_model.sh), reading the JSONL from a local file and from
# a real S3-compatible server on loopback (moto from the project's venv), and
# writing the results to a local file or to rolling parts under an S3 prefix,
# as JSONL and as Parquet: 3 runs of each, alternating; prints the median
# items/s and peak RSS of each and the S3/local ratios.
# Needs: cargo, python3; bash scripts/setup.sh done (ONNX Runtime, moto).
set -euo pipefail

N="${1:-100000}"
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash scripts/bench_objects.sh [N]   (N: texts, default 100000)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
SAMPLE="$ROOT/data/texts/sample.jsonl"
source "$ROOT/scripts/lib/text_ids_model.sh"
check_bench_files
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.sluice/onnxruntime/lib/libonnxruntime.so.1.32.0}"
PY="$ROOT/.sluice/venv/bin/python"
[[ -x "$ROOT/.sluice/venv/bin/moto_server" ]] || { echo "moto is missing: run bash scripts/setup.sh" >&2; exit 1; }

echo "[bench_objects] building the release binary" >&2
cargo build --release -q -p sluice-cli
BIN="$ROOT/target/release/sluice"
WORK="$(mktemp -d -t sluice-bench-objects.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/models"
write_text_ids_model "$WORK/models"

"$PY" - "$BIN" "$WORK" "$SAMPLE" "$N" "$ROOT/.sluice/venv/bin/moto_server" <<'PYEOF'
import json, os, socket, statistics, subprocess, sys, time
import boto3

bin_, work, sample, n, moto = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
texts = [json.loads(l)["text"][:80] for l in open(sample, encoding="utf-8") if l.strip()]
local = os.path.join(work, "texts.jsonl")
with open(local, "w") as f:
    f.writelines(json.dumps({"id": f"t{i}", "text": texts[i % len(texts)]}) + "\n" for i in range(n))

s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
               AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true")
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); break
        except OSError:
            time.sleep(0.1)
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="bench",
                      aws_secret_access_key="bench", region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    s3.upload_file(local, "bench", "texts/texts.jsonl")

    def once(source, output, fmt):
        t = time.monotonic()
        p = subprocess.Popen([bin_, "run", "--model", os.path.join(work, "models", "text-ids"),
                              "--input", source, "--output", output, "--output-format", fmt, "-q"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Peak RSS from /proc (VmHWM only grows; the last read is close to the
        # peak): ru_maxrss would count the forked Python before the exec.
        hwm = 0
        while p.poll() is None:
            try:
                for line in open(f"/proc/{p.pid}/status"):
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.02)
        status = p.returncode
        secs = time.monotonic() - t
        err = p.stderr.read().decode(errors="replace")
        if status != 0:
            sys.exit(f"sluice run {source} -> {output} failed:\n{err}")
        if output.startswith("s3://"):
            bucket, key = output[5:].split("/", 1)
            manifest = json.loads(s3.get_object(Bucket=bucket, Key=key + "_manifest.json")["Body"].read())
            rows = manifest["counts"]["total"]
            for part in manifest["parts"] + manifest["error_parts"]:
                s3.delete_object(Bucket=bucket, Key=key + part["file"])
            s3.delete_object(Bucket=bucket, Key=key + "_manifest.json")
        elif fmt == "parquet":
            import pyarrow.parquet as pq
            rows = pq.read_metadata(output).num_rows
        else:
            rows = sum(1 for _ in open(output))
        assert rows == n, f"{source} -> {output}: {rows} results for {n} inputs"
        return n / secs, hwm / 1024

    configs = {
        "local -> local, JSONL": (local, os.path.join(work, "out.jsonl"), "jsonl"),
        "S3 -> S3 parts, JSONL": ("s3://bench/texts/texts.jsonl", "s3://bench/out/", "jsonl"),
        "local -> local, Parquet": (local, os.path.join(work, "out.parquet"), "parquet"),
        "S3 -> S3 parts, Parquet": ("s3://bench/texts/texts.jsonl", "s3://bench/out/", "parquet"),
    }
    runs = {k: [] for k in configs}
    for _ in range(3):
        for k, c in configs.items():
            runs[k].append(once(*c))
finally:
    server.terminate(); server.wait()

print(f"{n:,} short texts, text-ids model, sluice run; median of 3 runs each, alternating")
print(f"{'source -> sink':<26} {'items/s':>10} {'peak RSS MiB':>13}   runs (items/s)")
med = {}
for k, v in runs.items():
    med[k] = statistics.median(x for x, _ in v)
    print(f"{k:<26} {med[k]:>10,.0f} {statistics.median(r for _, r in v):>13.0f}   "
          + ", ".join(f"{x:,.0f}" for x, _ in v))
for fmt in ["JSONL", "Parquet"]:
    print(f"S3 / local, {fmt}: {med[f'S3 -> S3 parts, {fmt}'] / med[f'local -> local, {fmt}']:.2f}x")
PYEOF
