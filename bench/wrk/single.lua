-- Single telemetry readings (seed 001's standard reading), POST /api/v1/ingest. Every request carries a
-- different device id, timestamp and a unique metric value, so tidegate's dedup never sees a duplicate.
--   wrk -t1 -c64 -d10s -s bench/wrk/single.lua http://127.0.0.1:8000/api/v1/ingest
-- Settings (environment): see common.lua.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local C = dofile(dir .. "common.lua")
C.records_per_request = 1

function request()
  local device, key = C.pick_device()
  local body = string.format(
    '{"device_id":"%s","timestamp":"%s","metrics":{"temperature":%.1f,"humidity":%.1f,"pressure":%.2f,"seq":%d},'
      .. '"metadata":{"firmware_version":"2.1.0","battery_level":%d,"signal_strength":%d}}',
    device, C.timestamp(math.random(0, 3600000)), 15 + math.random() * 20, 30 + math.random() * 50,
    990 + math.random() * 40, C.unique(), math.random(0, 100), -math.random(40, 110))
  C.mark_sent()
  return wrk.format("POST", nil, C.headers("application/json", key, C.pick_priority()), body)
end
