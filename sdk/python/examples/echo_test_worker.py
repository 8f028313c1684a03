"""A test worker that misbehaves on marked inputs (Sluice's OMI integration tests).

Each item's ``input`` is echoed back upper-cased as ``output``, with the size of
the batch it ran in (``batch_size``) and the worker's pid (``pid``). Markers
(the whole input, as text):

* ``FAIL``      the item fails alone (an ``Exception`` in place of its outputs)
* ``INVALID``   the item fails alone as an invalid input (``InvalidInput``)
* ``ABORTINVALID`` the whole Run is aborted with gRPC ``INVALID_ARGUMENT``
* ``RAISE``     ``process`` raises for the whole batch (the SDK isolates the item)
* ``CRASH``     the process exits mid-batch, every time (a poison input)
* ``CRASHONCE`` the process exits the first time it sees this input (state in
                ``$TEST_WORKER_STATE``), then works
* ``HANG``      sleeps forever
* ``HANGONCE``  sleeps forever the first time (state in ``$TEST_WORKER_STATE``)
* ``SLOW``      sleeps one second (a batch that takes a while)
* ``SHORT``     the Run response lacks the last output (a broken worker; the
                SDK itself never does this, so it is patched in below)

Memory (environment): ``TEST_WORKER_MEMORY_ITEMS=N`` makes ``process`` raise
``MemoryError`` for a batch of more than N items, as a model that runs out of
memory would.

Start-up faults (environment): ``TEST_WORKER_START_DELAY`` (seconds) delays
serving, so a test can kill a starting worker before it answers ``Status``;
``TEST_WORKER_START_ONCE=1`` makes every start after the first exit at once
(a worker that can never be restarted; state in ``$TEST_WORKER_STATE``).
"""

import os
import sys
import time

import grpc

from sluice_omi import InvalidInput, serve, server

STATE = os.environ.get("TEST_WORKER_STATE", "")
BATCH_SIZE = int(os.environ.get("TEST_WORKER_BATCH", "8"))
MEMORY_ITEMS = int(os.environ.get("TEST_WORKER_MEMORY_ITEMS", "0"))


def first_time(marker: str) -> bool:
    """True the first time `marker` is seen by any worker of this test (a file marks it)."""
    if not STATE:
        return True
    path = os.path.join(STATE, marker)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def process(batch):
    texts = [item.get("input", b"").decode("utf-8", "replace") for item in batch]
    if "RAISE" in texts:
        raise ValueError("RAISE marker in the batch")
    if MEMORY_ITEMS and len(batch) > MEMORY_ITEMS:
        raise MemoryError(f"cannot allocate activations for {len(batch)} items")
    for t in texts:
        if t == "CRASH" or (t == "CRASHONCE" and first_time("crashonce")):
            print(f"crashing on {t} in a batch of {len(batch)}", file=sys.stderr, flush=True)
            os._exit(17)
        if t == "SLOW":
            time.sleep(1.0)
        if t == "HANG" or (t == "HANGONCE" and first_time("hangonce")):
            print(f"hanging on {t} in a batch of {len(batch)}", file=sys.stderr, flush=True)
            time.sleep(3600)
    out = []
    for t in texts:
        if t == "FAIL":
            out.append(ValueError("FAIL marker: this item fails"))
        elif t == "INVALID":
            out.append(InvalidInput("INVALID marker: this input is not acceptable"))
        else:
            out.append({"output": t.upper(), "batch_size": str(len(batch)), "pid": str(os.getpid())})
    return out


_run = server.OmiServicer.Run


def run_dropping_last(self, request, context):
    if any(item.input.get("input") == b"ABORTINVALID" for item in request.inputs):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ABORTINVALID marker: the request is invalid")
    response = _run(self, request, context)
    if any(item.input.get("input") == b"SHORT" for item in request.inputs):
        del response.outputs[-1]
    return response


server.OmiServicer.Run = run_dropping_last


if __name__ == "__main__":
    if os.environ.get("TEST_WORKER_START_ONCE") == "1" and not first_time("started"):
        print("TEST_WORKER_START_ONCE: this worker starts only once", file=sys.stderr, flush=True)
        sys.exit(3)
    time.sleep(float(os.environ.get("TEST_WORKER_START_DELAY", "0")))
    serve(process, batch_size=BATCH_SIZE, inputs=["input"], outputs=["output"], name="echo-test", version="1")
