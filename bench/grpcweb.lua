-- wrk script: a gRPC-Web POST whose body (one framed request message) is read from $BODY_FILE.
--
-- With EXPECT_FRAMES and EXPECT_LEN set (the benchmark's warm-up runs), every response is checked:
-- HTTP 200, exactly EXPECT_FRAMES data frames of EXPECT_LEN bytes, then one trailer frame, last,
-- carrying grpc-status 0. Checking costs wrk CPU, so the measured runs leave both unset.
-- done() prints one machine-readable line: WRKJSON {...}.
local f = assert(io.open(assert(os.getenv("BODY_FILE"), "BODY_FILE is not set"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/grpc-web+proto"
wrk.headers["X-Grpc-Web"] = "1"
wrk.headers["Accept"] = "application/grpc-web+proto"

local expect_frames = tonumber(os.getenv("EXPECT_FRAMES") or "")
local expect_len = tonumber(os.getenv("EXPECT_LEN") or "")

-- per-thread counters (globals, so that done() can read them with thread:get)
checked = 0
bad = 0
first_bad = ""

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

local function u32(s, i)
  local a, b, c, d = s:byte(i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

local function verify(status, headers, body)
  if status ~= 200 then
    return "HTTP " .. status
  end
  local i, n, data, trailer = 1, #body, 0, nil
  while i + 4 <= n do
    local flags, len = body:byte(i), u32(body, i + 1)
    if i + 4 + len > n then
      return "frame cut short"
    end
    if flags >= 128 then
      if trailer or i + 4 + len ~= n then
        return "trailer frame is not the last frame"
      end
      trailer = body:sub(i + 5, i + 4 + len)
    elseif len ~= expect_len then
      return "data frame of " .. len .. " B"
    else
      data = data + 1
    end
    i = i + 5 + len
  end
  if i ~= n + 1 then
    return "stray bytes after the last frame"
  end
  if not trailer then
    return "no trailer frame, grpc-status header " .. tostring(headers["grpc-status"] or headers["Grpc-Status"])
  end
  if data ~= expect_frames then
    return data .. " data frames"
  end
  if not trailer:lower():find("grpc%-status:%s*0\r\n") then
    return "trailer " .. trailer
  end
  return nil
end

if expect_frames and expect_len then
  function response(status, headers, body)
    checked = checked + 1
    local why = verify(status, headers, body)
    if why then
      bad = bad + 1
      if first_bad == "" then
        first_bad = why:gsub("[^%w%-:. ]", "?")
      end
    end
  end
end

function done(summary, latency, requests)
  local n_checked, n_bad, why = 0, 0, ""
  for _, t in ipairs(threads) do
    n_checked = n_checked + t:get("checked")
    n_bad = n_bad + t:get("bad")
    if why == "" then
      why = t:get("first_bad")
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"checked":%d,"bad":%d,"first_bad":"%s"}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout, n_checked, n_bad, why))
end
