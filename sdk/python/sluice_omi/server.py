"""The OMI gRPC server around an author's batch function."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from concurrent import futures
from typing import Any, Callable, Iterable, Optional, Sequence

import grpc

from . import model_pb2, model_pb2_grpc

log = logging.getLogger("sluice_omi")

Item = dict
ProcessFn = Callable[[list], list]

_MAX_MESSAGE = 256 * 1024 * 1024


def _to_bytes(value: Any) -> bytes:
    """Output values: bytes as-is, str as UTF-8, arrays via tobytes(), anything else as JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if hasattr(value, "tobytes"):
        return value.tobytes()
    return json.dumps(value).encode("utf-8")


class InvalidInput(ValueError):
    """Raise (or return in place of an item's outputs) when the *input* is at
    fault: wrong size, undecodable, out of range. The item fails with
    ``error_code = invalid_input`` beside its ``error`` text, and Sluice answers
    the client 400 instead of 500."""


class _BatchOutOfMemory(Exception):
    """A batch of more than one item ran out of memory: Sluice splits it and backs off."""


def _is_out_of_memory(exc: BaseException) -> bool:
    """``MemoryError``, or an error that says so (PyTorch's ``CUDA out of memory``)."""
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OmiServicer(model_pb2_grpc.ModzyModelServicer):
    """Implements ModzyModel around ``process``; one batch at a time."""

    def __init__(
        self,
        process: ProcessFn,
        *,
        batch_size: int = 1,
        inputs: Sequence[str] = ("input",),
        outputs: Sequence[str] = ("output",),
        name: str = "model",
        version: str = "1",
        author: str = "",
        description: str = "",
        run_timeout: str = "300s",
        status_timeout: str = "60s",
        on_shutdown: Optional[Callable[[], None]] = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.process = process
        self.batch_size = batch_size
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.name = name
        self.version = version
        self.author = author
        self.description = description
        self.run_timeout = run_timeout
        self.status_timeout = status_timeout
        self.on_shutdown = on_shutdown
        self._lock = threading.Lock()

    # --- the three RPCs ------------------------------------------------------
    def Status(self, request, context):  # noqa: N802 (gRPC method name)
        return model_pb2.StatusResponse(
            status_code=200,
            status="OK",
            message="ready",
            model_info=model_pb2.ModelInfo(
                model_name=self.name, model_version=self.version, model_author=self.author, source="sluice-omi"
            ),
            description=model_pb2.ModelDescription(summary=self.description),
            inputs=[
                model_pb2.ModelInput(filename=n, accepted_media_types=["application/octet-stream"])
                for n in self.inputs
            ],
            outputs=[model_pb2.ModelOutput(filename=n, media_type="application/octet-stream") for n in self.outputs],
            timeout=model_pb2.ModelTimeout(status=self.status_timeout, run=self.run_timeout),
            features=model_pb2.ModelFeatures(batch_size=self.batch_size, results_format="bytes"),
        )

    def Run(self, request, context):  # noqa: N802
        batch = [dict(item.input) for item in request.inputs]
        results = []
        with self._lock:
            # A client may send more than batch_size items: serve them in chunks.
            try:
                for start in range(0, len(batch), self.batch_size):
                    results.extend(self._run_isolating(batch[start : start + self.batch_size]))
            except _BatchOutOfMemory as exc:
                # Sluice recognises RESOURCE_EXHAUSTED: it splits the batch, retries the
                # halves and lowers the model's batch size, instead of failing items.
                log.warning("batch of %d ran out of memory (%s)", len(batch), exc)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"out of memory: {exc}")
        outputs = [self._output_item(r) for r in results]
        failed = sum(1 for o in outputs if not o.success)
        return model_pb2.RunResponse(
            status_code=200,
            status="OK",
            message=f"{len(outputs) - failed} succeeded, {failed} failed",
            outputs=outputs,
        )

    def Shutdown(self, request, context):  # noqa: N802
        log.info("Shutdown requested")
        if self.on_shutdown is not None:
            threading.Thread(target=self.on_shutdown, daemon=True).start()
        return model_pb2.ShutdownResponse(status_code=200, status="OK", message="shutting down")

    # --- helpers -------------------------------------------------------------
    def _run_isolating(self, batch: list) -> list:
        try:
            results = list(self.process(batch))
            if len(results) != len(batch):
                raise ValueError(f"process returned {len(results)} results for {len(batch)} inputs")
            return results
        except Exception as exc:  # the author's code failed on the batch as a whole
            if len(batch) == 1:
                log.warning("item failed: %s", _error_text(exc))
                return [exc]
            if _is_out_of_memory(exc):
                raise _BatchOutOfMemory(_error_text(exc)) from exc
            log.warning("batch of %d failed (%s); running its items one by one", len(batch), _error_text(exc))
            return [self._run_isolating([item])[0] for item in batch]

    @staticmethod
    def _output_item(result: Any):
        if isinstance(result, BaseException):
            output = {"error": _error_text(result).encode("utf-8")}
            if isinstance(result, InvalidInput):
                output["error_code"] = b"invalid_input"
            return model_pb2.OutputItem(output=output, success=False)
        if not isinstance(result, dict):
            err = f"process must return a dict of outputs per item, got {type(result).__name__}"
            return model_pb2.OutputItem(output={"error": err.encode("utf-8")}, success=False)
        try:
            return model_pb2.OutputItem(output={str(k): _to_bytes(v) for k, v in result.items()}, success=True)
        except Exception as exc:  # an output that cannot be encoded fails its item only
            return model_pb2.OutputItem(output={"error": _error_text(exc).encode("utf-8")}, success=False)


def _watch_parent() -> None:
    """Exits when the process that started us (Sluice) is gone: no orphan workers."""
    parent = os.environ.get("SLUICE_PARENT_PID")
    if not parent:
        return
    try:
        parent_pid = int(parent)
    except ValueError:
        return
    # Not PR_SET_PDEATHSIG: it fires when the *thread* that started us exits,
    # and Sluice starts workers from short-lived threads.
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(
    process: ProcessFn,
    *,
    batch_size: int = 1,
    inputs: Iterable[str] = ("input",),
    outputs: Iterable[str] = ("output",),
    name: str = "model",
    version: str = "1",
    author: str = "",
    description: str = "",
    run_timeout: str = "300s",
    status_timeout: str = "60s",
    port: Optional[int] = None,
    host: Optional[str] = None,
) -> None:
    """Serves ``process`` on ``host:port`` (default ``PSC_MODEL_HOST`` or all
    interfaces, ``PSC_MODEL_PORT`` or 45000) until ``Shutdown`` or a signal."""
    logging.basicConfig(
        level=os.environ.get("SLUICE_OMI_LOG", "INFO"),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _watch_parent()
    port = port if port is not None else int(os.environ.get("PSC_MODEL_PORT", "45000"))
    host = host or os.environ.get("PSC_MODEL_HOST", "[::]")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ],
    )
    servicer = OmiServicer(
        process,
        batch_size=batch_size,
        inputs=list(inputs),
        outputs=list(outputs),
        name=name,
        version=version,
        author=author,
        description=description,
        run_timeout=run_timeout,
        status_timeout=status_timeout,
        on_shutdown=lambda: server.stop(grace=1.0),
    )
    model_pb2_grpc.add_ModzyModelServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen on {address}")
    server.start()
    log.info("OMI worker '%s' serving on %s (batch size %d)", name, address, batch_size)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=1.0)
    log.info("OMI worker '%s' stopped", name)


