"""Drives a running `sluice serve` with the official Triton client (tritonclient).

Run by crates/sluice-cli/tests/kserve.rs with the project's venv:
    python tritonclient_check.py HTTP_HOST:PORT GRPC_HOST:PORT MLP_ONNX_PATH

Checks, over both HTTP and gRPC: liveness, readiness, server and model
metadata, model readiness, and inference on
  - `tiny-mlp` (x: FP32 [-1, 4] -> y: FP32 [-1, 3]), compared against ONNX
    Runtime run here on the same file, with several rows in one request;
  - `minilm-l6` with BYTES text inputs, returning 384-d unit-norm embeddings
    that agree between HTTP and gRPC and between batched and single requests;
and that errors come back as exceptions naming the problem. Prints one line
per check and exits non-zero on the first failure.
"""

import sys

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

HTTP, GRPC, MLP_PATH = sys.argv[1], sys.argv[2], sys.argv[3]

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Sluice batches requests from many clients into one model call.",
    "Un texte en français, pour changer.",
]


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def reference_mlp(x):
    sess = ort.InferenceSession(MLP_PATH, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def mlp_rows(n):
    rng = np.random.default_rng(7)
    return rng.standard_normal((n, 4)).astype(np.float32)


def run(proto, mod, client):
    check(client.is_server_live(), f"{proto}: server live")
    check(client.is_server_ready(), f"{proto}: server ready")
    meta = client.get_server_metadata()
    name = meta["name"] if isinstance(meta, dict) else meta.name
    check(name == "sluice", f"{proto}: server metadata names sluice ({name})")
    check(client.is_model_ready("tiny-mlp"), f"{proto}: tiny-mlp ready")
    check(client.is_model_ready("minilm-l6"), f"{proto}: minilm-l6 ready")
    check(not client.is_model_ready("no-such-model"), f"{proto}: unknown model not ready")

    md = client.get_model_metadata("tiny-mlp")
    if isinstance(md, dict):
        inputs = [(i["name"], i["datatype"], list(i["shape"])) for i in md["inputs"]]
        outputs = [(o["name"], o["datatype"], list(o["shape"])) for o in md["outputs"]]
    else:
        inputs = [(i.name, i.datatype, list(i.shape)) for i in md.inputs]
        outputs = [(o.name, o.datatype, list(o.shape)) for o in md.outputs]
    check(inputs == [("x", "FP32", [-1, 4])], f"{proto}: tiny-mlp inputs {inputs}")
    check(outputs == [("y", "FP32", [-1, 3])], f"{proto}: tiny-mlp outputs {outputs}")

    # Several rows in one request: split into items, batched, reassembled in order.
    x = mlp_rows(5)
    want = reference_mlp(x)
    for binary in (True, False):
        inp = mod.InferInput("x", list(x.shape), "FP32")
        if proto == "http":
            inp.set_data_from_numpy(x, binary_data=binary)
            out = [mod.InferRequestedOutput("y", binary_data=binary)]
        else:
            if not binary:
                continue  # gRPC always carries raw contents
            inp.set_data_from_numpy(x)
            out = [mod.InferRequestedOutput("y")]
        res = client.infer("tiny-mlp", [inp], outputs=out, request_id="req-1")
        y = res.as_numpy("y")
        check(y is not None and y.shape == (5, 3), f"{proto} binary={binary}: y shape {None if y is None else y.shape}")
        err = float(np.abs(y - want).max())
        check(err < 1e-5, f"{proto} binary={binary}: 5 rows match ONNX Runtime in order (max err {err:.2e})")

    # MiniLM with BYTES inputs.
    texts = np.array([t.encode() for t in TEXTS], dtype=np.object_)
    inp = mod.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(texts)
    emb = client.infer("minilm-l6", [inp]).as_numpy("embedding")
    check(emb.shape == (3, 384), f"{proto}: minilm embeddings shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1)
    check(np.allclose(norms, 1.0, atol=1e-4), f"{proto}: embeddings are unit norm {norms}")
    singles = []
    for t in TEXTS:
        one = mod.InferInput("text", [1], "BYTES")
        one.set_data_from_numpy(np.array([t.encode()], dtype=np.object_))
        singles.append(client.infer("minilm-l6", [one]).as_numpy("embedding")[0])
    cos = [float(np.dot(a, b)) for a, b in zip(emb, singles)]
    check(min(cos) > 0.9999, f"{proto}: batched rows equal single requests (cosine {min(cos):.6f})")

    # Errors name the problem.
    bad = mod.InferInput("x", [1, 4], "INT64")
    bad.set_data_from_numpy(np.zeros((1, 4), dtype=np.int64))
    try:
        client.infer("tiny-mlp", [bad])
        check(False, f"{proto}: INT64 input refused")
    except InferenceServerException as e:
        check("FP32" in str(e), f"{proto}: wrong datatype refused: {e}")
    try:
        client.infer("no-such-model", [inp])
        check(False, f"{proto}: unknown model refused")
    except InferenceServerException as e:
        check("no-such-model" in str(e), f"{proto}: unknown model refused: {e}")
    return emb


http = httpclient.InferenceServerClient(url=HTTP)
emb_http = run("http", httpclient, http)
grpc = grpcclient.InferenceServerClient(url=GRPC)
emb_grpc = run("grpc", grpcclient, grpc)
diff = float(np.abs(emb_http - emb_grpc).max())
check(diff < 1e-6, f"HTTP and gRPC agree (max diff {diff:.2e})")
print("all tritonclient checks passed")
