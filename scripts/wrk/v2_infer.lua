-- wrk script: POST one KServe v2 request with the binary tensor extension.
-- BODY_FILE holds the request (JSON header + raw tensor bytes); HEADER_LEN is
-- the JSON header's length. Written by scripts/bench_realtime.sh.
wrk.method = "POST"
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = os.getenv("HEADER_LEN")
