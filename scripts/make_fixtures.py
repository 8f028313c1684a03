#!/usr/bin/env python3
"""Write the small ONNX models and data files that Sluice's tests and demos use.

Why this exists: the Rust tests need ONNX models whose outputs are known exactly,
and the demo/benchmark needs a non-trivial dense model; none of these can be
downloaded, so they are written here with the `onnx` helper API from fixed seeds
(same bytes every run for a given onnx version). Each model is checked once with
onnxruntime after writing.

Default mode (run by scripts/setup.sh) writes only files that are MISSING:
  models/mlp/model.onnx                                   ~25 MB, gitignored
      3-layer MLP 512->2048->2048->512 (ReLU between), input `input` f32 [batch,512],
      output `output` f32 [batch,512]; weights ~ N(0, 1/fan_in), numpy default_rng(0).
  crates/sluice-engine/tests/fixtures/tiny_mlp.onnx       <1 KB, committed
      MLP 4->8->3 (ReLU), input `x` f32 [batch,4], output `y` f32 [batch,3].
  crates/sluice-engine/tests/fixtures/tiny_mlp_expected.json   committed
      3 fixed input rows and their outputs computed with numpy.
  crates/sluice-engine/tests/fixtures/text_ids.onnx       committed
      inputs `input_ids`, `attention_mask` int64 [batch,seq]; output
      `last_hidden_state` f32 [batch,seq,2] = [float(input_id), float(mask)] per token,
      so tests can check padding and per-item slicing exactly.
  --force rewrites them all.

One-off mode, --from-shared DIR (DIR = the read-only shared/ folder that exists
only on development machines; the outputs are committed, so users never need it):
  crates/sluice-engine/tests/fixtures/minilm_texts.jsonl  first 40 lines of fortunes-en
      + first 2 of fortunes-de + first 1 of fortunes-es (texts kept as is).
  data/texts/sample.jsonl   2,000 lines of fortunes-en + 500 each of de/es/it,
      evenly spaced through each file (ids are already language-prefixed: "en-123").
  Then run scripts/minilm_reference.py to refresh minilm_reference.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "crates/sluice-engine/tests/fixtures"
OPSET = 17
IR_VERSION = 8  # goes with opset 17; readable by every onnxruntime >= 1.12


def save_model(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sluice/scripts/make_fixtures.py", producer_version="1")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    print(f"  wrote {path.relative_to(REPO)} ({path.stat().st_size:,} bytes)")


def ort_run(path: Path, feed: dict) -> list[np.ndarray]:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def mlp_graph(name: str, sizes: list[int], rng: np.random.Generator, in_name: str, out_name: str):
    """Gemm(+ReLU) chain; returns (graph, [(W, b), ...]) with W as [in, out]."""
    nodes, inits, params = [], [], []
    x = in_name
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        W = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        params.append((W, b))
        inits += [numpy_helper.from_array(W, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        last = i == len(sizes) - 2
        y = out_name if last else f"fc{i}_out"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [y], name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}_out"], name=f"relu{i}"))
            y = f"relu{i}_out"
        x = y
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=inits)
    return graph, params


def mlp_numpy(params, x: np.ndarray) -> np.ndarray:
    for i, (W, b) in enumerate(params):
        x = x @ W + b
        if i < len(params) - 1:
            x = np.maximum(x, 0)
    return x


def make_big_mlp(path: Path) -> None:
    graph, params = mlp_graph("mlp_512_2048_2048_512", [512, 2048, 2048, 512],
                              np.random.default_rng(0), "input", "output")
    save_model(graph, path)
    x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
    (y,) = ort_run(path, {"input": x})
    err = float(np.abs(y - mlp_numpy(params, x)).max())
    assert y.shape == (4, 512) and err < 1e-3, (y.shape, err)
    print(f"    onnxruntime check ok: output {y.shape}, max |ort - numpy| = {err:.2e}")


def make_tiny_mlp(path: Path, expected_path: Path) -> None:
    graph, params = mlp_graph("tiny_mlp_4_8_3", [4, 8, 3], np.random.default_rng(42), "x", "y")
    save_model(graph, path)
    x = np.array([[0.0, 0.0, 0.0, 0.0],
                  [1.0, -2.0, 0.5, 3.0],
                  [-0.25, 0.75, -1.5, 2.0]], np.float32)
    expected = mlp_numpy(params, x).astype(np.float32)
    (y,) = ort_run(path, {"x": x})
    err = float(np.abs(y - expected).max())
    assert y.shape == (3, 3) and err < 1e-5, (y.shape, err)
    # Single-row runs must equal the batched run (what a batching engine relies on).
    for i in range(3):
        assert np.allclose(ort_run(path, {"x": x[i:i + 1]})[0][0], y[i], atol=1e-6)
    # One row per line: readable, and small diffs if it ever changes.
    rows = lambda a: ",\n".join("    " + json.dumps([float(v) for v in r]) for r in a)  # noqa: E731
    expected_path.write_text(
        "{\n"
        f'  "model": "{path.name}", "input_name": "x", "output_name": "y", "tolerance": 1e-5,\n'
        '  "note": "outputs computed with numpy float32 by scripts/make_fixtures.py",\n'
        f'  "inputs": [\n{rows(x)}\n  ],\n'
        f'  "outputs": [\n{rows(expected)}\n  ]\n'
        "}\n")
    assert json.loads(expected_path.read_text())["outputs"][1][1] == float(expected[1][1])
    print(f"    onnxruntime check ok: max |ort - numpy| = {err:.2e}; wrote {expected_path.relative_to(REPO)}")


def make_text_ids(path: Path) -> None:
    as_col = helper.make_tensor("axes_last", TensorProto.INT64, [1], [-1])
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids_f", "axes_last"], ["ids_3d"]),
        helper.make_node("Unsqueeze", ["mask_f", "axes_last"], ["mask_3d"]),
        helper.make_node("Concat", ["ids_3d", "mask_3d"], ["last_hidden_state"], axis=-1),
    ]
    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes, "text_ids",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dims)],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [2])],
        initializer=[as_col])
    save_model(graph, path)
    ids = np.array([[101, 7, 102, 0], [101, 8, 9, 102]], np.int64)
    mask = (ids != 0).astype(np.int64)
    (h,) = ort_run(path, {"input_ids": ids, "attention_mask": mask})
    assert h.shape == (2, 4, 2) and np.array_equal(h, np.stack([ids, mask], -1).astype(np.float32))
    print("    onnxruntime check ok: output == stack([ids, mask], -1)")


def from_shared(shared: Path) -> None:
    texts = shared / "data/texts"

    def read(lang: str) -> list[dict]:
        with (texts / f"fortunes-{lang}.jsonl").open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def write(path: Path, rows: list[dict]) -> None:
        ids = [r["id"] for r in rows]
        assert len(set(ids)) == len(ids), "ids must be unique"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) + "\n")
        print(f"  wrote {path.relative_to(REPO)} ({len(rows)} lines, {path.stat().st_size:,} bytes)")

    def spread(rows: list[dict], n: int) -> list[dict]:
        """n rows evenly spaced through the file (the files are grouped by topic)."""
        return [rows[i * len(rows) // n] for i in range(n)]

    en, de, es, it = read("en"), read("de"), read("es"), read("it")
    write(FIXTURES / "minilm_texts.jsonl", en[:40] + de[:2] + es[:1])
    write(REPO / "data/texts/sample.jsonl", spread(en, 2000) + spread(de, 500) + spread(es, 500) + spread(it, 500))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true", help="rewrite the models even if present")
    ap.add_argument("--from-shared", type=Path, metavar="DIR",
                    help="one-off: (re)write the committed text fixtures/samples from DIR (the shared/ folder)")
    args = ap.parse_args()

    if args.from_shared:
        if not (args.from_shared / "data/texts").is_dir():
            sys.exit(f"error: {args.from_shared}/data/texts not found")
        from_shared(args.from_shared)
        return

    # (files the job writes, job); a job runs when any of its files is missing.
    tiny_expected = FIXTURES / "tiny_mlp_expected.json"
    jobs = [
        ([REPO / "models/mlp/model.onnx"], make_big_mlp),
        ([FIXTURES / "tiny_mlp.onnx", tiny_expected], lambda p: make_tiny_mlp(p, tiny_expected)),
        ([FIXTURES / "text_ids.onnx"], make_text_ids),
    ]
    for paths, make in jobs:
        if all(p.exists() for p in paths) and not args.force:
            print(f"  {paths[0].relative_to(REPO)} present, kept")
        else:
            make(paths[0])


if __name__ == "__main__":
    main()
