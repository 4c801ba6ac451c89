-- wrk script for every HTTP/1.1 scenario.
--
-- ROTATE_FILE  one request per line, "host path [name:value]": requests go round them, so the
--              load is spread over every route of the set (each wrk thread starts elsewhere).
-- PACE_MS      when set, each connection waits this long before each request, which bounds
--              the rate at connections x 1000 / PACE_MS requests per second (the latency runs).
--              Connections that start together then stay in step: the proxy sees a burst of
--              every connection's request at once, each PACE_MS.
-- PACE_SPREAD  when "1", each wait is drawn at random (exponential, mean PACE_MS, at most 10
--              times it), so that requests arrive spread out as from independent clients.
-- CLOSE        when "1", every request asks for Connection: close (a new connection each).
--
-- At the end one JSON line with the counts and the latency percentiles (microseconds).

local rotate_file = os.getenv("ROTATE_FILE") or ""
local pace = tonumber(os.getenv("PACE_MS") or "0") or 0
local close = os.getenv("CLOSE") == "1"
local spread = os.getenv("PACE_SPREAD") == "1"

local requests = {}
local next_index = 1
local threads = {}

function setup(thread)
  thread:set("thread_number", #threads)
  table.insert(threads, thread)
end

function init(args)
  if close then
    wrk.headers["Connection"] = "close"
  end
  if rotate_file == "" then
    return
  end
  for line in io.lines(rotate_file) do
    local host, path, header = line:match("^(%S+)%s+(%S+)%s*(%S*)$")
    if host then
      local headers = { Host = host }
      if close then
        headers["Connection"] = "close"
      end
      if header ~= "" then
        local name, value = header:match("^([^:]+):(.*)$")
        headers[name] = value
      end
      table.insert(requests, wrk.format("GET", path, headers))
    end
  end
  next_index = ((thread_number or 0) * 7919) % #requests + 1
end

if rotate_file ~= "" then
  function request()
    local r = requests[next_index]
    next_index = next_index % #requests + 1
    return r
  end
end

if pace > 0 and spread then
  math.randomseed(os.time())
  function delay()
    return math.floor(math.min(-pace * math.log(1 - math.random()), 10 * pace))
  end
elseif pace > 0 then
  function delay()
    return pace
  end
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "p999_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
