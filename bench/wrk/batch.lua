-- Batches of BENCH_RECORDS readings (default 100), POST /api/v1/ingest/batch: {device_id, batch_id, readings[]}.
-- A unique batch_id per request, and every reading unique: the request's number and the reading's index are in
-- its metrics. Bodies are cut from 16 templates made at start (timestamps and values vary between them) so that
-- the load generator spends its CPU on sending, not on formatting (it shares the machine with the server).
--   BENCH_RECORDS=100 wrk -t1 -c64 -d10s -s bench/wrk/batch.lua http://127.0.0.1:8000/api/v1/ingest/batch
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local C = dofile(dir .. "common.lua")
C.records_per_request = C.records

local TEMPLATES = 16
local templates = nil

-- A template: the text around the request number, reading by reading: frag[1] .. seq .. frag[2] .. seq ...
local function make_template()
  local frags = {}
  local back = math.random(0, 3600000)
  for i = 1, C.records do
    frags[i] = string.format('%s{"timestamp":"%s","metrics":{"temperature":%.1f,"humidity":%.1f,"i":%d,"seq":',
      i == 1 and "" or "}},", C.timestamp(back + i * 1000), 15 + math.random() * 20, 30 + math.random() * 50, i)
  end
  return frags
end

local parts = {}

function request()
  if templates == nil then
    templates = {}
    for t = 1, TEMPLATES do templates[t] = make_template() end
  end
  local device, key = C.pick_device()
  local seq = tostring(C.unique())
  local frags = templates[math.random(TEMPLATES)]
  local n = C.records
  parts[1] = '{"device_id":"' .. device .. '","batch_id":"b-' .. seq .. '","readings":['
  for i = 1, n do
    parts[2 * i] = frags[i]
    parts[2 * i + 1] = seq
  end
  parts[2 * n + 2] = "}}]}"
  C.mark_sent()
  return wrk.format("POST", nil, C.headers("application/json", key, C.pick_priority()), table.concat(parts, "", 1, 2 * n + 2))
end
