"""Serve a Python batch function as an Open Model Interface (OMI) gRPC worker.

The author writes ``process(batch: list[dict[str, bytes]]) -> list[dict[str, bytes]]``
and calls :func:`serve`; the SDK answers ``Status``, ``Run`` and ``Shutdown`` of
the ``ModzyModel`` service (the chassis OMI proto) on ``PSC_MODEL_PORT``.

Per-item failures: ``process`` may put an ``Exception`` instance in its result
list in place of an item's outputs; that item fails alone (``success = false``,
its message under the ``error`` key). If ``process`` raises, or returns the
wrong number of results, the SDK runs the batch's items one at a time to find
which ones fail, so one bad input never fails its neighbours. An
:class:`InvalidInput` exception marks the input itself as at fault
(``error_code = invalid_input``): Sluice then answers its client 400, not 500.
"""

from .server import InvalidInput, OmiServicer, serve

__all__ = ["InvalidInput", "OmiServicer", "serve"]
