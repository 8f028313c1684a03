#!/usr/bin/env bash
# Regenerates sluice_omi/model_pb2.py and model_pb2_grpc.py from proto/omi/model.proto
# with grpcio-tools from .sluice/venv (run scripts/setup.sh first). The generated files
# are committed so that installing the SDK needs only grpcio and protobuf.
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(cd ../.. && pwd)"
PY="${PYTHON:-$ROOT/.sluice/venv/bin/python}"
"$PY" -m grpc_tools.protoc -I "$ROOT/proto/omi" --python_out=sluice_omi --grpc_python_out=sluice_omi \
    "$ROOT/proto/omi/model.proto"
# protoc writes a top-level import; the SDK is a package.
sed -i 's/^import model_pb2 as model__pb2$/from . import model_pb2 as model__pb2/' sluice_omi/model_pb2_grpc.py
echo "regenerated sluice_omi/model_pb2.py and sluice_omi/model_pb2_grpc.py"
