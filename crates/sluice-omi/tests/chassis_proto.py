"""Helper of proto_compat.rs: the chassis project's own OMI messages (PyPI
chassisml-protobuf, module chassis.protos.v1.model_pb2) on the other side of
the wire.

    python chassis_proto.py descriptor   hex of chassis's FileDescriptorProto
    python chassis_proto.py encode       JSON {message: hex} of sample messages
    python chassis_proto.py decode       reads JSON {message: hex} encoded by Sluice on
                                         stdin, parses each with chassis, compares it
                                         with the same sample, prints JSON {message: "ok" | diff}

The samples must match `samples()` in proto_compat.rs field for field.
"""

import json
import sys

from google.protobuf import descriptor_pb2
from chassis.protos.v1 import model_pb2 as m


def samples():
    return {
        "StatusResponse": m.StatusResponse(
            status_code=200,
            status="OK",
            message="ready",
            model_info=m.ModelInfo(
                model_name="mlp", model_version="1.2", model_author="me", model_type="grpc", source="sluice"
            ),
            description=m.ModelDescription(summary="s", details="d", technical="t", performance="p"),
            inputs=[
                m.ModelInput(
                    filename="input", accepted_media_types=["application/octet-stream", "text/plain"],
                    max_size="5M", description="in",
                )
            ],
            outputs=[m.ModelOutput(filename="results.json", media_type="application/json", max_size="1M", description="out")],
            resources=m.ModelResources(required_ram="2Gi", num_cpus=1.5, num_gpus=2),
            timeout=m.ModelTimeout(status="60s", run="120s"),
            features=m.ModelFeatures(
                adversarial_defense=True, batch_size=32, retrainable=True,
                results_format="json", drift_format="d", explanation_format="e",
            ),
        ),
        "RunRequest": m.RunRequest(
            inputs=[
                m.InputItem(input={"input": b"\x00\x01\xff", "config": b"{}"}),
                m.InputItem(input={"input": b""}),
            ],
            detect_drift=True,
            explain=True,
        ),
        "RunResponse": m.RunResponse(
            status_code=200,
            status="OK",
            message="1 failed",
            outputs=[
                m.OutputItem(output={"results.json": b'{"x": 1}'}, success=True),
                m.OutputItem(output={"error": b"bad input"}, success=False),
            ],
        ),
        "ShutdownResponse": m.ShutdownResponse(status_code=200, status="OK", message="bye"),
        "StatusRequest": m.StatusRequest(),
        "ShutdownRequest": m.ShutdownRequest(),
    }


def main():
    mode = sys.argv[1]
    if mode == "descriptor":
        fd = descriptor_pb2.FileDescriptorProto()
        m.DESCRIPTOR.CopyToProto(fd)
        print(fd.SerializeToString().hex())
    elif mode == "encode":
        print(json.dumps({k: v.SerializeToString().hex() for k, v in samples().items()}))
    elif mode == "decode":
        got = json.load(sys.stdin)
        report = {}
        for name, expected in samples().items():
            msg = type(expected)()
            msg.ParseFromString(bytes.fromhex(got[name]))
            report[name] = "ok" if msg == expected else f"differs: got {msg} expected {expected}"
        print(json.dumps(report))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
