-- A mixed-priority fleet: single readings from many devices (some mid key rotation, using both of their keys),
-- X-Priority 10% high / 60% medium / 30% low (BENCH_PRIORITY=mix, the default here) or one priority for every
-- request (BENCH_PRIORITY=high|medium|low: the overload ramp runs one wrk per priority to count each apart).
--   BENCH_DEVICES=devices.lua wrk -t1 -c64 -d10s -s bench/wrk/fleet.lua http://127.0.0.1:8000/api/v1/ingest
--   BENCH_PRIORITY=high BENCH_PACE_RPS=100 BENCH_TIMED=1 wrk -t16 -c16 -d10s -s bench/wrk/fleet.lua URL
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local C = dofile(dir .. "common.lua")
C.records_per_request = 1
if C.priority == nil then C.priority = "mix" end

local KINDS = { "temperature", "humidity", "pressure", "vibration_rms", "co2_ppm" }

function request()
  local device, key = C.pick_device()
  local kind = KINDS[math.random(#KINDS)]
  local body = string.format(
    '{"device_id":"%s","timestamp":"%s","metrics":{"%s":%.2f,"seq":%d},"metadata":{"battery_level":%d}}',
    device, C.timestamp(math.random(0, 600000)), kind, math.random() * 100, C.unique(), math.random(0, 100))
  C.mark_sent()
  return wrk.format("POST", nil, C.headers("application/json", key, C.pick_priority()), body)
end
