-- wrk script: a POST of $BODY_FILE with Content-Type $CONTENT_TYPE (bench.connect_cost: Connect JSON
-- and binary). Every response must be HTTP 200 (wrk counts others as errors); done() prints one
-- machine-readable line: WRKJSON {...}, the shape bench.harness.wrk reads.
local f = assert(io.open(assert(os.getenv("BODY_FILE"), "BODY_FILE is not set"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = assert(os.getenv("CONTENT_TYPE"), "CONTENT_TYPE is not set")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"err_connect": %d, "err_read": %d, "err_write": %d, "err_status": %d, "err_timeout": %d, ' ..
    '"checked": 0, "bad": 0, "first_bad": ""}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
