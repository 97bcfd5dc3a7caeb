-- wrk script: POST the JSON bodies of a file (one per line) in turn, count the answers by status code.
--
--   wrk -t2 -c32 -d15s --latency -s jobs/bench/serving_post.lua http://127.0.0.1:8000/recommend -- bodies.txt
--
-- done() prints one line `RAYSYS_WRK {...}` (JSON): requests, duration_s, requests_per_s, statuses,
-- errors (wrk's socket errors) and latency_ms (wrk's own, measured from the actual send: closed loop).
-- serving_paced.lua loads this file and adds a fixed send schedule on top.

local threads = {} -- setup() and done() run in wrk's main Lua state: the thread handles live there

function setup(thread)
  thread:set("id", #threads) -- 0, 1, ...: each thread starts at its own body
  table.insert(threads, thread)
end

function read_requests(path)
  local requests = {}
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if line ~= "" then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line) -- built once: request() is a lookup
    end
  end
  assert(#requests > 0, "no request bodies in " .. path)
  return requests
end

function init(args)
  requests = read_requests(args[1])
  next_request = (id * 7919) % #requests + 1
  statuses = {}
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

-- ------------------------------------------------------------------------------------------- done

function each_thread(name)
  -- the global `name` of every thread, copied into the main state
  local values = {}
  for i, thread in ipairs(threads) do
    values[i] = thread:get(name)
  end
  return values
end

function merge_counts(tables)
  local total = {}
  for _, counts in ipairs(tables) do
    for key, n in pairs(counts) do
      total[tostring(key)] = (total[tostring(key)] or 0) + n
    end
  end
  return total
end

function json(value)
  -- numbers, strings, booleans and string-keyed tables (JSON objects): all that done() writes
  local kind = type(value)
  if kind == "table" then
    local parts = {}
    for key, item in pairs(value) do
      parts[#parts + 1] = string.format("%q:%s", tostring(key), json(item))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif kind == "number" then
    if value ~= value or value == math.huge or value == -math.huge then
      return "null"
    end
    return value == math.floor(value) and string.format("%d", value) or string.format("%.4f", value)
  elseif kind == "string" then
    return string.format("%q", value)
  elseif kind == "boolean" then
    return tostring(value)
  end
  return "null"
end

function report(summary, latency)
  -- the figures both scripts print
  local seconds = summary.duration / 1e6
  return {
    threads = #threads,
    requests = summary.requests,
    duration_s = seconds,
    requests_per_s = summary.requests / seconds,
    statuses = merge_counts(each_thread("statuses")),
    errors = summary.errors,
    latency_ms = {
      p50 = latency:percentile(50) / 1000,
      p90 = latency:percentile(90) / 1000,
      p99 = latency:percentile(99) / 1000,
      max = latency.max / 1000,
      mean = latency.mean / 1000,
    },
  }
end

function done(summary, latency, requests)
  print("RAYSYS_WRK " .. json(report(summary, latency)))
end
