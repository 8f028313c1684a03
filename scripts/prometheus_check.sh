#!/usr/bin/env bash
# Scrapes a running Sluice with a real Prometheus (Debian `prometheus`) for
# about 20 seconds and checks that the target is up with no scrape error, then
# prints what Prometheus's /api/v1/targets said.
#
# usage: scripts/prometheus_check.sh              # starts its own sluice serve on a free port
#        SLUICE_URL=http://127.0.0.1:8080 scripts/prometheus_check.sh   # scrape an existing server
# env:   PROM_PORT (default 9090), PROM_SECONDS (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v prometheus >/dev/null || { echo "prometheus_check: install it with: apt-get install -y prometheus" >&2; exit 1; }
PROM_PORT=${PROM_PORT:-9090}
PROM_SECONDS=${PROM_SECONDS:-20}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -z "${SLUICE_URL:-}" ]; then
  [ -x target/release/sluice ] || cargo build --release -q -p sluice-cli
  PORT=$(free_port)
  SLUICE_URL="http://127.0.0.1:$PORT"
  target/release/sluice serve --models models --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 150); do curl -sf "$SLUICE_URL/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -sf "$SLUICE_URL/readyz" >/dev/null || { cat "$WORK/server.log" >&2; echo "prometheus_check: the server is not ready" >&2; exit 1; }
  # Some traffic, so histograms and job gauges have samples.
  curl -sf "$SLUICE_URL/v1/jobs" -H 'content-type: application/json' \
    -d '{"model":"minilm-l6","inputs":{"a":"first text","b":"a second, longer text","c":"third"}}' >/dev/null || true
fi
TARGET=${SLUICE_URL#http://}
TARGET=${TARGET%/}

cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 2s
  scrape_timeout: 1s
scrape_configs:
  - job_name: sluice
    metrics_path: /metrics
    static_configs:
      - targets: ["$TARGET"]
YML
promtool check config "$WORK/prometheus.yml" >/dev/null 2>&1 || true
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
echo "prometheus_check: Prometheus on 127.0.0.1:$PROM_PORT scraping $SLUICE_URL/metrics for ${PROM_SECONDS}s"
sleep "$PROM_SECONDS"

TARGETS=$(curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/targets") || { cat "$WORK/prometheus.log" >&2; echo "prometheus_check: Prometheus API unreachable" >&2; exit 1; }
echo "$TARGETS"
SERIES=$(curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/query?query=count(%7B__name__%3D~%22sluice_.*%22%7D)" || echo '{}')
echo "$SERIES"
python3 - "$TARGETS" "$SERIES" <<'PY'
import json, sys
t = json.loads(sys.argv[1])
active = t["data"]["activeTargets"]
assert len(active) == 1, f"expected one target, got {len(active)}"
a = active[0]
print(f"target {a['scrapeUrl']}: health={a['health']} lastError={a['lastError']!r} lastScrapeDuration={a['lastScrapeDuration']}")
assert a["health"] == "up", "target is not up"
assert a["lastError"] == "", "scrape error"
s = json.loads(sys.argv[2])
n = int(float(s["data"]["result"][0]["value"][1]))
print(f"{n} sluice_* series stored")
assert n > 0
print("prometheus_check: ok")
PY
