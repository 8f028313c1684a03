#!/usr/bin/env bash
# Benchmark of video input (a benchmark, not a test: it prints figures and
# asserts nothing about them, beyond checking that each command ran and saw the
# frames it should).
#
#   bash scripts/bench_video.sh
#
# In one run, on this machine, with the ffmpeg at .sluice/bin/ffmpeg (Sluice is
# pointed at the same one through SLUICE_FFMPEG):
#   a. decode only, frames/s: `ffmpeg -i FILE -f null -` (every frame decoded,
#      nothing converted), the same decode scaled to 416x416 RGB and piped (what
#      a model's input costs in ffmpeg alone), and `sluice frames --input FILE
#      --size 416x416` (Sluice's own decode path, as for NanoDet, frames counted
#      and dropped). On data/video/vtest.avi (200 frames, median of 3), and once
#      each on a 30-minute file (18,000 frames) with their peak RSS.
#   b. NanoDet-m throughput (items/s) from the video itself (`sluice run --input
#      vtest.avi --every 1`, all 200 frames) against the same 200 frames
#      extracted beforehand as JPEG files (`ffmpeg -q:v 2`) run as an image
#      folder; median of 3 runs each, alternating; and the ratio.
#   c. peak RSS of `sluice run --input LONG.avi --fps 2 --summary ...` over the
#      30-minute file (3,600 frames through NanoDet-m, about a minute on 2
#      cores): memory must not grow with the video's length.
# The 30-minute file is data/video/vtest.avi (20 s) joined to itself 90 times
# with ffmpeg's concat demuxer and stream copy (no re-encoding), in a temp
# folder that is removed on exit.
# Peak RSS: GNU time's "Maximum resident set size" (/usr/bin/time -v) where it
# exists, which is the larger of Sluice and its ffmpeg child (ru_maxrss of a
# process tree is its largest member, not the sum); beside it, from /proc:
# Sluice's own VmHWM and the peak of Sluice + ffmpeg together (sampled VmRSS).
# Needs: cargo; bash scripts/setup.sh done (ONNX Runtime, .sluice/bin/ffmpeg).
# Runs the release binary target/release/sluice, building it when it is missing
# (or lacks the `frames` command); SLUICE_BIN=PATH runs another binary as it
# is. REPS=N changes the 3 repetitions.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
FFMPEG="$ROOT/.sluice/bin/ffmpeg"
CUT="$ROOT/data/video/vtest.avi"
MODEL="$ROOT/models/nanodet-m"
BIN="${SLUICE_BIN:-$ROOT/target/release/sluice}"
REPS="${REPS:-3}"
COPIES=90   # 90 x 20 s = 30 min

say() { printf '[bench_video] %s\n' "$*" >&2; }

if ! [[ "$REPS" =~ ^[1-9][0-9]*$ ]]; then
    echo "REPS must be a positive whole number (got '$REPS')" >&2
    exit 2
fi
[[ -x "$FFMPEG" ]] || { echo "$FFMPEG is missing: run bash scripts/setup.sh" >&2; exit 1; }
[[ -f "$CUT" ]] || { echo "$CUT is missing (committed footage, see data/video/README.md)" >&2; exit 1; }
[[ -f "$MODEL/model.onnx" ]] || { echo "$MODEL/model.onnx is missing" >&2; exit 1; }
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.sluice/onnxruntime/lib/libonnxruntime.so.1.32.0}"
[[ -f "$ORT_DYLIB_PATH" ]] || { echo "$ORT_DYLIB_PATH is missing: run bash scripts/setup.sh" >&2; exit 1; }
# Sluice and the ffmpeg reference figures use the very same ffmpeg binary.
export SLUICE_FFMPEG="$FFMPEG"
if [[ -x "$ROOT/.sluice/venv/bin/python" ]]; then PY="$ROOT/.sluice/venv/bin/python"; else PY=python3; fi
TIME_BIN=""
if [[ -x /usr/bin/time ]] && /usr/bin/time -v true >/dev/null 2>&1; then TIME_BIN=/usr/bin/time; fi

if [[ -z "${SLUICE_BIN:-}" ]] && { [[ ! -x "$BIN" ]] || ! "$BIN" frames --help >/dev/null 2>&1; }; then
    say "building the release binary (cargo build --release -p sluice-cli)"
    cargo build --release -q -p sluice-cli
fi

WORK="$(mktemp -d -t sluice-bench-video.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# The concat demuxer reads names relative to the list file, so the list holds a
# plain name and no path needs quoting.
say "making a 30-minute file: $COPIES x data/video/vtest.avi, concat demuxer, stream copy"
cp "$CUT" "$WORK/vtest.avi"
for _ in $(seq "$COPIES"); do echo "file 'vtest.avi'"; done > "$WORK/concat.txt"
"$FFMPEG" -hide_banner -nostdin -loglevel error -f concat -i "$WORK/concat.txt" -c copy "$WORK/long.avi"

say "extracting the 200 frames of data/video/vtest.avi as JPEG (ffmpeg -q:v 2)"
mkdir "$WORK/jpg"
"$FFMPEG" -hide_banner -nostdin -loglevel error -i "$WORK/vtest.avi" -q:v 2 "$WORK/jpg/%05d.jpg"

"$PY" - "$BIN" "$FFMPEG" "$WORK" "$MODEL" "$REPS" "$TIME_BIN" <<'PYEOF'
import json, os, re, statistics, subprocess, sys, time

bin_, ffmpeg, work, model, reps, time_bin = sys.argv[1:7]
reps = int(reps)
cut = os.path.join(work, "vtest.avi")
long_ = os.path.join(work, "long.avi")
jpg_dir = os.path.join(work, "jpg")
TIMEOUT = 900  # seconds, any one command
CUT_FRAMES, LONG_FRAMES, LONG_FPS = 200, 18000, 2
n_jpg = len([f for f in os.listdir(jpg_dir) if f.endswith(".jpg")])
failures = []


class Failed(Exception):
    pass


def ppid_map():
    """pid -> parent pid, for every process now."""
    m = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    m[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return m


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(argv, *, rss=False, drain=False):
    """Runs argv; returns dict(wall, out, err, rc, and the RSS figures when rss).

    drain: read stdout through a pipe and throw it away (raw frames)."""
    wrapped = argv
    tfile = os.path.join(work, "time.txt")
    if rss and time_bin:
        wrapped = [time_bin, "-v", "-o", tfile] + argv
    outf = open(os.path.join(work, "cmd.out"), "w+b")
    errf = open(os.path.join(work, "cmd.err"), "w+b")
    t0 = time.monotonic()
    p = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stderr=errf,
                         stdout=subprocess.PIPE if drain else outf)
    main_hwm = tree_peak = 0
    drained = 0
    try:
        if drain:
            buf = bytearray(1 << 20)
            while True:
                k = p.stdout.readinto(buf)
                if not k:
                    break
                drained += k
                if time.monotonic() - t0 > TIMEOUT:
                    raise subprocess.TimeoutExpired(argv, TIMEOUT)
            p.wait(timeout=TIMEOUT)
        else:
            while p.poll() is None:
                if time.monotonic() - t0 > TIMEOUT:
                    raise subprocess.TimeoutExpired(argv, TIMEOUT)
                if rss:
                    # The process tree: [time ->] sluice -> ffmpeg. VmHWM only
                    # grows, so the last good read of it is close to the peak.
                    m = ppid_map()
                    top = p.pid
                    if time_bin:
                        kids = [c for c, pp in m.items() if pp == p.pid]
                        top = kids[0] if kids else None
                    if top is not None:
                        tree, todo = [], [top]
                        while todo:
                            x = todo.pop()
                            tree.append(x)
                            todo += [c for c, pp in m.items() if pp == x]
                        main_hwm = max(main_hwm, status_kb(top, "VmHWM"))
                        tree_peak = max(tree_peak, sum(status_kb(x, "VmRSS") for x in tree))
                    time.sleep(0.1)
                else:
                    time.sleep(0.01)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise Failed(f"timed out after {TIMEOUT} s: {' '.join(argv)}")
    wall = time.monotonic() - t0
    outf.seek(0); errf.seek(0)
    r = dict(wall=wall, rc=p.returncode, drained=drained,
             out=outf.read().decode(errors="replace"), err=errf.read().decode(errors="replace"))
    outf.close(); errf.close()
    if r["rc"] != 0:
        tail = "\n".join((r["out"] + r["err"]).strip().splitlines()[-15:])
        raise Failed(f"exit {r['rc']}: {' '.join(argv)}\n{tail}")
    if rss:
        r["time_kb"] = None
        if time_bin:
            with open(tfile) as f:
                m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", f.read())
            r["time_kb"] = int(m.group(1)) if m else None
        r["hwm_kb"], r["tree_kb"] = main_hwm, tree_peak
    return r


def ffmpeg_frames(r):
    m = re.findall(r"frame=\s*(\d+)", r["err"])
    if not m:
        raise Failed("no frame= count in ffmpeg's output")
    return int(m[-1])


def sluice_frames(r):
    m = re.search(r"(\d+) frames in ([0-9.]+) ?s", r["out"] + r["err"])
    if not m:
        raise Failed("no 'N frames in S s' line from sluice frames:\n" + (r["out"] + r["err"])[-800:])
    return int(m.group(1)), float(m.group(2))


def sluice_items(r):
    m = re.search(r"(\d+) items \((\d+) ok, (\d+) failed\) in ([0-9.]+)s = ([0-9.]+) items/s", r["err"])
    if not m:
        raise Failed("no 'N items (... ok, ... failed) in Ss = X items/s' line from sluice run:\n" + r["err"][-800:])
    total, ok, failed, secs, rate = m.groups()
    return int(total), int(ok), int(failed), float(secs), float(rate)


def rows(path):
    with open(path) as f:
        return sum(1 for line in f if line.strip())


# One table row: (section, what, frames, seconds, frames or items/s, RSS text, note)
table = []


def measure(section, what, fn, n_reps):
    """fn() -> (frames, seconds, rate, rss_text, note); median over n_reps of the rate."""
    got = []
    try:
        for _ in range(n_reps):
            got.append(fn())
    except Failed as e:
        failures.append(f"{section} {what}: {e}")
        print(f"[bench_video] FAILED {section} {what}: {e}", file=sys.stderr)
        table.append((section, what, None, None, None, "", "FAILED"))
        return None
    order = sorted(range(len(got)), key=lambda i: got[i][2])
    mid = got[order[len(got) // 2]]   # the run with the median rate (odd counts; upper median otherwise)
    note = mid[4]
    if len(got) > 1:
        note = (note + "; " if note else "") + "runs " + ", ".join(f"{g[2]:,.0f}" for g in got)
    table.append((section, what, mid[0], mid[1], mid[2], mid[3], note))
    return mid


def mb(kb):
    return f"{kb / 1024:.0f}" if kb else "?"


def rss_text(r):
    parts = []
    if r.get("time_kb"):
        parts.append(f"{mb(r['time_kb'])} (time -v)")
    parts.append(f"sluice {mb(r['hwm_kb'])}, with ffmpeg {mb(r['tree_kb'])}" if r["argv0"] == "sluice"
                 else f"{mb(r['tree_kb'])}")
    return ", ".join(parts)


def expect(n, want, what):
    if n != want:
        raise Failed(f"{what}: {n} frames, expected {want}")


# --- a. decode only ----------------------------------------------------------
def ff_null(path, want, rss=False):
    def f():
        r = run([ffmpeg, "-hide_banner", "-nostdin", "-i", path, "-f", "null", "-"], rss=rss)
        n = ffmpeg_frames(r)
        expect(n, want, "ffmpeg -f null")
        r["argv0"] = "ffmpeg"
        return n, r["wall"], n / r["wall"], rss_text(r) if rss else "", "wall clock"
    return f


def ff_scaled(path, want):
    def f():
        r = run([ffmpeg, "-hide_banner", "-nostdin", "-i", path, "-map", "0:v:0", "-vf", "scale=416:416",
                 "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"], drain=True)
        n = r["drained"] // (416 * 416 * 3)
        expect(n, want, "ffmpeg scale 416x416 rgb24")
        return n, r["wall"], n / r["wall"], "", "wall clock"
    return f


def sl_frames(path, want, rss=False):
    def f():
        r = run([bin_, "frames", "--input", path, "--size", "416x416"], rss=rss)
        n, secs = sluice_frames(r)
        expect(n, want, "sluice frames")
        r["argv0"] = "sluice"
        return n, secs, n / max(secs, 1e-9), rss_text(r) if rss else "", f"own timing; wall {r['wall']:.2f} s"
    return f


print(f"[bench_video] a. decode only: data/video/vtest.avi ({CUT_FRAMES} frames), median of {reps}",
      file=sys.stderr)
a_ff = measure("a", "ffmpeg -f null, vtest.avi", ff_null(cut, CUT_FRAMES), reps)
measure("a", "ffmpeg -> 416x416 rgb24 pipe, vtest.avi", ff_scaled(cut, CUT_FRAMES), reps)
a_sl = measure("a", "sluice frames --size 416x416, vtest.avi", sl_frames(cut, CUT_FRAMES), reps)
print(f"[bench_video] a. decode only: the 30-minute file ({LONG_FRAMES:,} frames), once each, with peak RSS",
      file=sys.stderr)
measure("a", "ffmpeg -f null, 30 min", ff_null(long_, LONG_FRAMES, rss=True), 1)
measure("a", "sluice frames --size 416x416, 30 min", sl_frames(long_, LONG_FRAMES, rss=True), 1)


# --- b. NanoDet-m from the video vs from JPEG files --------------------------
def nanodet(input_, extra, want, out_name):
    def f():
        out = os.path.join(work, out_name)
        r = run([bin_, "run", "--model", model, "--input", input_, *extra, "--output", out, "-q"])
        total, ok, failed, secs, rate = sluice_items(r)
        expect(total, want, "sluice run")
        if failed:
            raise Failed(f"{failed} of {total} items failed")
        expect(rows(out), want, f"rows in {out_name}")
        return total, secs, rate, "", f"sluice's items/s; wall {r['wall']:.1f} s with model load"
    return f


print(f"[bench_video] b. NanoDet-m, {CUT_FRAMES} frames from the video vs {n_jpg} JPEG files, "
      f"median of {reps}, alternating", file=sys.stderr)
video_runs, jpeg_runs = [], []
b_video_f = nanodet(cut, ["--every", "1"], CUT_FRAMES, "video.jsonl")
b_jpeg_f = nanodet(jpg_dir, [], n_jpg, "jpeg.jsonl")
b_failed = {}
for i in range(reps):
    for runs, fn, key in ((video_runs, b_video_f, "video"), (jpeg_runs, b_jpeg_f, "jpeg")):
        if key in b_failed:
            continue
        try:
            runs.append(fn())
        except Failed as e:
            b_failed[key] = e


def b_row(what, runs, key):
    if key in b_failed:
        failures.append(f"b {what}: {b_failed[key]}")
        print(f"[bench_video] FAILED b {what}: {b_failed[key]}", file=sys.stderr)
        table.append(("b", what, None, None, None, "", "FAILED"))
        return None
    order = sorted(range(len(runs)), key=lambda i: runs[i][2])
    mid = runs[order[len(runs) // 2]]
    note = mid[4] + ("; runs " + ", ".join(f"{g[2]:,.1f}" for g in runs) if len(runs) > 1 else "")
    table.append(("b", what, mid[0], mid[1], mid[2], "", note))
    return mid


b_video = b_row("nanodet-m, from vtest.avi (--every 1)", video_runs, "video")
b_jpeg = b_row(f"nanodet-m, from {n_jpg} JPEG files", jpeg_runs, "jpeg")


# --- c. peak RSS over the 30-minute file -------------------------------------
def long_run():
    out = os.path.join(work, "long.jsonl")
    summary = os.path.join(work, "long-summary.json")
    r = run([bin_, "run", "--model", model, "--input", long_, "--fps", str(LONG_FPS),
             "--output", out, "--summary", summary, "-q"], rss=True)
    want = int(LONG_FRAMES / 10 * LONG_FPS)
    total, ok, failed, secs, rate = sluice_items(r)
    expect(total, want, f"sluice run --fps {LONG_FPS}")
    with open(summary) as f:
        s = json.load(f)
    v = s["videos"][0]
    r["argv0"] = "sluice"
    person = (v.get("labels") or {}).get("person") or {}
    note = (f"--fps {LONG_FPS}; {failed} failed; "
            f"summary: {v.get('frames')} frames, {v.get('duration_s')} s, "
            f"{person.get('detections', 0)} person detections; wall {r['wall']:.0f} s")
    return total, secs, rate, rss_text(r), note


print(f"[bench_video] c. NanoDet-m over the 30-minute file at --fps {LONG_FPS} "
      f"({int(LONG_FRAMES / 10 * LONG_FPS)} frames), with peak RSS", file=sys.stderr)
measure("c", f"nanodet-m, 30 min at --fps {LONG_FPS}", long_run, 1)


# --- the table ---------------------------------------------------------------
def fmt(x, spec):
    return "-" if x is None else format(x, spec)


cores = os.cpu_count()
try:
    ffv = subprocess.run([ffmpeg, "-hide_banner", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
except OSError:
    ffv = "?"
print()
print(f"Video input benchmark: {cores} CPU cores; {ffv}")
print(f"peak RSS in MB: GNU time's maximum RSS (the larger of sluice and its ffmpeg child) where present; "
      f"then from /proc: sluice's VmHWM, and sluice + ffmpeg together")
w = max(len(t[1]) for t in table)
print(f"{'':2}{'measurement':<{w}}  {'frames':>7}  {'s':>8}  {'per s':>9}  {'peak RSS MB':<40}  notes")
for sec, what, n, secs, rate, rss, note in table:
    print(f"{sec:<2}{what:<{w}}  {fmt(n, ',d'):>7}  {fmt(secs, '.2f'):>8}  {fmt(rate, ',.1f'):>9}  {rss:<40}  {note}")
print()
if a_ff and a_sl:
    print(f"a. sluice frames / ffmpeg -f null on vtest.avi: {a_sl[2] / a_ff[2]:.2f}x the frames/s "
          f"(sluice also scales to 416x416 RGB and reads the frames through a pipe)")
if b_video and b_jpeg:
    print(f"b. NanoDet-m from the video / from JPEG files: {b_video[2] / b_jpeg[2]:.2f}x the items/s "
          f"({b_video[2]:,.1f} vs {b_jpeg[2]:,.1f})")
if failures:
    print(f"\n{len(failures)} measurement(s) failed:", file=sys.stderr)
    for f in failures:
        print("  " + f.splitlines()[0], file=sys.stderr)
    sys.exit(1)
PYEOF
