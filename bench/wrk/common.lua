-- Shared by the wrk scripts in bench/wrk (LuaJIT, loaded with dofile by each of them).
--
-- Settings come from the environment (so that they are known when wrk loads the script, before init):
--   BENCH_DEVICES   a Lua file returning { {device_id, key [, second_key]}, ... } (written by `python -m bench`);
--                   without it: 1000 devices "bench-00001".., token "none" (for the no-op peer or auth off)
--   BENCH_NONCE     an integer < 1e6, different for every wrk process of a session: keeps records unique
--   BENCH_PRIORITY  high | medium | low | mix (10% high / 60% medium / 30% low); unset: no X-Priority header
--   BENCH_RECORDS   readings per batch (batch.lua) or events per body (events.lua)
--   BENCH_PACE_RPS  requests/s per connection (paced, open-loop-ish): run with -t equal to -c
--   BENCH_TIMED     1: per-status latency histograms (one connection per thread: -t equal to -c)
--   BENCH_HONOUR_RETRY_AFTER  1: after a 429/503 with Retry-After, a paced connection waits that long before its
--                   next request, as a good SDK does (default: retries on its pace, ignoring it)
-- done() prints one line "WRKJSON {...}": wrk's summary, latency percentiles, and per thread the status counts and
-- latency histograms (BENCH_TIMED; log buckets: bucket b holds latencies around 1.02^b microseconds).

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")

local M = {}

function M.now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local devices_file = os.getenv("BENCH_DEVICES")
if devices_file and devices_file ~= "" then
  M.devices = dofile(devices_file)
else
  M.devices = {}
  for i = 1, 1000 do M.devices[i] = { string.format("bench-%05d", i), "none" } end
end
M.nonce = tonumber(os.getenv("BENCH_NONCE") or "0") or 0
M.priority = os.getenv("BENCH_PRIORITY")
if M.priority == "" then M.priority = nil end
M.records = tonumber(os.getenv("BENCH_RECORDS") or "100") or 100
M.pace_rps = tonumber(os.getenv("BENCH_PACE_RPS") or "")
M.timed = os.getenv("BENCH_TIMED") == "1"
M.honour_retry_after = os.getenv("BENCH_HONOUR_RETRY_AFTER") == "1"

-- A timestamp `back_ms` before now, RFC 3339 with milliseconds, UTC.
function M.timestamp(back_ms)
  local ms = os.time() * 1000 - back_ms
  local sec = math.floor(ms / 1000)
  return os.date("!%Y-%m-%dT%H:%M:%S", sec) .. string.format(".%03dZ", ms % 1000)
end

function M.pick_priority()
  if M.priority ~= "mix" then return M.priority end
  local r = math.random()
  if r < 0.1 then return "high" elseif r < 0.7 then return "medium" end
  return "low"
end

-- A device and one of its keys (a device mid-rotation holds two and uses both).
function M.pick_device()
  local d = M.devices[math.random(#M.devices)]
  if d[3] and math.random() < 0.5 then return d[1], d[3] end
  return d[1], d[2]
end

function M.headers(content_type, key, priority)
  local h = { ["Content-Type"] = content_type, ["X-Device-Token"] = key }
  if priority then h["X-Priority"] = priority end
  return h
end

-- Thread bookkeeping: ids for unique sequence numbers, counters collected by done().
local threads = {}
local next_tid = 1

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

M.counter = 0
-- A number unique to this request in this session (exact in a double: < 2^53).
function M.unique()
  M.counter = M.counter + 1
  return ((M.nonce * 1000) + (tid or 0)) * 1000000 + M.counter
end

function init(args)
  math.randomseed(M.nonce * 7919 + (tid or 0) * 104729 + os.time())
  counts = {}
  hist = {}
  sent_at = 0
  next_at = nil
  first_us = nil
  last_us = nil
end

local LOG_STEP = math.log(1.02)
local function bucket(us)
  if us < 1 then us = 1 end
  return math.floor(math.log(us) / LOG_STEP)
end
M.LOG_STEP = 1.02

function M.mark_sent()
  if M.timed then
    sent_at = M.now_us()
    if first_us == nil then first_us = sent_at end
  end
end

local function retry_after_s(headers)
  local value = headers["retry-after"] or headers["Retry-After"]
  return value and tonumber(value) or nil
end

if M.timed or M.honour_retry_after then
  function response(status, headers, body)
    if M.timed then
      local key = tostring(status)
      counts[key] = (counts[key] or 0) + 1
      local h = hist[key]
      if h == nil then h = {}; hist[key] = h end
      last_us = M.now_us()
      local b = bucket(last_us - sent_at)
      h[b] = (h[b] or 0) + 1
    end
    if M.honour_retry_after and (status == 429 or status == 503) then
      local wait = retry_after_s(headers)
      if wait then
        -- The pace resumes after the wait: the requests of the waited interval are not sent (not made up later).
        backoff_until = M.now_us() + wait * 1000000
      end
    end
  end
end

if M.pace_rps and M.pace_rps > 0 then
  local interval = 1000000 / M.pace_rps
  function delay()
    local now = M.now_us()
    if next_at == nil then
      next_at = now + math.random() * interval -- spread the connections' first requests over one interval
    else
      next_at = next_at + interval
    end
    if backoff_until ~= nil and next_at < backoff_until then next_at = backoff_until end
    local wait = next_at - now
    if wait < -1000000 then next_at = now; wait = 0 end -- more than a second behind: do not burst to catch up
    if wait <= 0 then return 0 end
    return math.floor(wait / 1000 + 0.5)
  end
end

local function json_table(t)
  local parts = {}
  for k, v in pairs(t) do
    local value = type(v) == "table" and json_table(v) or tostring(v)
    table.insert(parts, string.format("%q:%s", tostring(k), value))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- wrk's thread:get cannot copy these nested tables safely ("invalid key to 'next'"): a thread hands its
-- counters over as a JSON string instead, made in its own Lua state when the main state reads `thread_json`.
setmetatable(_G, {
  __index = function(_, name)
    if name == "thread_json" then
      -- first request sent and last answer received: a thread's own window (wrk starts threads one by one)
      local window = (first_us and last_us and last_us > first_us) and (last_us - first_us) or 0
      return json_table({ status_counts = counts or {}, hist = hist or {}, window_us = window })
    end
    return nil
  end,
})

function done(summary, latency, requests)
  local per_thread = {}
  for _, thread in ipairs(threads) do
    table.insert(per_thread, thread:get("thread_json") or "{}")
  end
  local pct = {}
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do pct[tostring(p)] = latency:percentile(p) end
  local e = summary.errors
  local out = {
    requests = summary.requests,
    duration_us = summary.duration,
    bytes = summary.bytes,
    errors = { connect = e.connect, read = e.read, write = e.write, status = e.status, timeout = e.timeout },
    latency_us = { mean = latency.mean, max = latency.max, p = pct },
    hist_log_step = M.LOG_STEP,
    records_per_request = M.records_per_request or 1,
  }
  local text = json_table(out)
  io.write("WRKJSON " .. text:sub(1, -2) .. ',"threads":[' .. table.concat(per_thread, ",") .. "]}\n")
end

return M
