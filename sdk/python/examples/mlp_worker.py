"""An OMI worker running the 3-layer MLP (models/mlp/model.onnx) with onnxruntime.

Input ``input``: 512 float32 values, little-endian (2048 bytes). Output
``output``: 512 float32 values. The whole batch runs as one onnxruntime call.

    python mlp_worker.py [path/to/model.onnx]      # PSC_MODEL_PORT, default 45000

``OMI_BATCH_SIZE`` (default 32) is the batch size declared in Status;
``OMI_THREADS`` sets onnxruntime's intra-op threads (default: onnxruntime's).
"""

import os
import sys

import numpy as np
import onnxruntime as ort

from sluice_omi import InvalidInput, serve

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "models", "mlp", "model.onnx")
WIDTH = 512

opts = ort.SessionOptions()
threads = int(os.environ.get("OMI_THREADS", "0"))
if threads:
    opts.intra_op_num_threads = threads
session = ort.InferenceSession(MODEL, sess_options=opts, providers=["CPUExecutionProvider"])
INPUT = session.get_inputs()[0].name
OUTPUT = session.get_outputs()[0].name


def process(batch):
    results = [None] * len(batch)
    rows, where = [], []
    for i, item in enumerate(batch):
        data = item.get("input", b"")
        if len(data) != WIDTH * 4:
            results[i] = InvalidInput(f"input must be {WIDTH} float32 values ({WIDTH * 4} bytes), got {len(data)} bytes")
            continue
        rows.append(np.frombuffer(data, dtype="<f4"))
        where.append(i)
    if rows:
        y = session.run([OUTPUT], {INPUT: np.stack(rows)})[0].astype("<f4")
        for row, i in zip(y, where):
            results[i] = {"output": row.tobytes()}
    return results


if __name__ == "__main__":
    serve(
        process,
        batch_size=int(os.environ.get("OMI_BATCH_SIZE", "32")),
        inputs=["input"],
        outputs=["output"],
        name="mlp",
        version="1",
        description="3-layer MLP 512-2048-2048-512 (random weights) on onnxruntime",
    )
