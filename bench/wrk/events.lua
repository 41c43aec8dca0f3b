-- Seed 004 events as NDJSON, BENCH_RECORDS per body (default 100), POST /api/v1/events. Every event carries the
-- request's number and its index in its payload, so none is a DUPLICATE. Bodies are cut from 16 templates made at
-- start (types, entities, times and steps vary between them), to keep the load generator's CPU for sending.
--   BENCH_RECORDS=100 wrk -t1 -c64 -d10s -s bench/wrk/events.lua http://127.0.0.1:8000/api/v1/events
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local C = dofile(dir .. "common.lua")
C.records_per_request = C.records

local TYPES = { "heartbeat", "login", "purchase", "step_count", "error" }
local TEMPLATES = 16
local templates = nil

local function make_template()
  local frags = {}
  local back = math.random(0, 86400000)
  for i = 1, C.records do
    frags[i] = string.format(
      '%s{"source":"demo","event_type":"%s","entity_id":"user_%d","event_time":"%s","payload":{"steps":%d,"i":%d,"seq":',
      i == 1 and "" or "}}\n", TYPES[math.random(#TYPES)], math.random(1, 5000), C.timestamp(back + i),
      math.random(0, 20000), i)
  end
  return frags
end

local parts = {}

function request()
  if templates == nil then
    templates = {}
    for t = 1, TEMPLATES do templates[t] = make_template() end
  end
  local _, key = C.pick_device()
  local seq = tostring(C.unique())
  local frags = templates[math.random(TEMPLATES)]
  local n = C.records
  for i = 1, n do
    parts[2 * i - 1] = frags[i]
    parts[2 * i] = seq
  end
  parts[2 * n + 1] = "}}\n"
  C.mark_sent()
  return wrk.format("POST", nil, C.headers("application/x-ndjson", key, C.pick_priority()), table.concat(parts, "", 1, 2 * n + 1))
end
