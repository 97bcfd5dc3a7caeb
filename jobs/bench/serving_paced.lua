-- wrk script: serving_post.lua's requests on a fixed schedule, latency counted from the scheduled send time.
--
--   wrk -t16 -c16 -d15s -s jobs/bench/serving_paced.lua http://127.0.0.1:8000/recommend -- bodies.txt 400 16
--                                                                                   (bodies, req/s, threads)
-- Give every thread exactly one connection (-tC -cC), so its requests and answers alternate. Thread k
-- sends request i at t0 + (k + i * C) / rate (t0: its first delay() call), i.e. rate / C per thread,
-- the threads interleaved. A request's latency runs from its scheduled time (from the actual send if
-- that was earlier: wrk's timers have millisecond steps), so a late send, i.e. waiting for the previous
-- answer, counts as latency: no coordinated omission. done() prints `RAYSYS_WRK {...}` with the
-- figures of serving_post.lua plus `paced`: offered/sent/achieved req/s and p50/p95/p99/max ms. The
-- rates are over wrk's whole run, start-up included (about 0.1 s: under 1 % low at 15 s).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "serving_post.lua")

local ffi = require("ffi")
ffi.cdef([[
  typedef struct { long tv_sec; long tv_nsec; } timespec;
  int clock_gettime(int, timespec*);
]])
local CLOCK_MONOTONIC = 1
local ts = ffi.new("timespec[1]")

function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts[0].tv_sec) * 1000 + tonumber(ts[0].tv_nsec) / 1e6
end

local post_init, post_request, post_response, post_report = init, request, response, report

function init(args)
  post_init(args)
  rate = tonumber(args[2])
  local connections = tonumber(args[3])
  interval_ms = 1000 * connections / rate -- between two sends of this thread
  phase_ms = 1000 * id / rate
  start_ms = nil -- set by the first delay()
  sent = 0
  origin_ms = nil -- where the latency of the request in flight starts
  latencies = {}
end

function delay()
  local now = now_ms()
  start_ms = start_ms or now + phase_ms
  return math.max(0, math.floor(start_ms + sent * interval_ms - now))
end

function request()
  if start_ms then -- nil when wrk calls request() once before the run, to check what it returns
    origin_ms = math.min(start_ms + sent * interval_ms, now_ms())
    sent = sent + 1
  end
  return post_request()
end

function response(status, headers, body)
  post_response(status, headers, body)
  if origin_ms then -- nil after a reconnect: that request's answer never came
    latencies[#latencies + 1] = now_ms() - origin_ms
    origin_ms = nil
  end
end

-- ------------------------------------------------------------------------------------------- done

function percentile(sorted, p)
  -- nearest rank
  if #sorted == 0 then
    return nil
  end
  return sorted[math.max(1, math.ceil(p / 100 * #sorted))]
end

function paced_figures(seconds)
  local all = {}
  for _, values in ipairs(each_thread("latencies")) do
    for _, value in ipairs(values) do
      all[#all + 1] = value
    end
  end
  table.sort(all)
  local sent_total = 0
  for _, n in ipairs(each_thread("sent")) do
    sent_total = sent_total + n
  end
  return {
    offered_rps = each_thread("rate")[1],
    sent = sent_total,
    answered = #all,
    sent_rps = sent_total / seconds,
    achieved_rps = #all / seconds,
    p50_ms = percentile(all, 50),
    p95_ms = percentile(all, 95),
    p99_ms = percentile(all, 99),
    max_ms = all[#all],
  }
end

function report(summary, latency)
  local figures = post_report(summary, latency)
  figures.paced = paced_figures(summary.duration / 1e6)
  return figures
end
