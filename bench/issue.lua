-- wrk script for bench/run.py: issue tokens, one request after another, each for new run ids.
--
--   wrk -t2 -c50 -d2s --latency -s bench/issue.lua http://127.0.0.1:PORT/api/v1/feedback/tokens -- API_KEY BATCH
--
-- BATCH 1 sends one object per request; BATCH 100 an array of 100. Every token gets its own
-- run_id (a UUID built from a per-thread counter), key "user_score", continuous 0..1 config.
-- done() prints one line "BENCH_RESULT {json}"; tokens/s = requests/s * BATCH.

local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

function init(args)
   api_key = args[1]
   batch = tonumber(args[2]) or 1
   n = 0
   headers = {["Content-Type"] = "application/json", ["X-API-Key"] = api_key}
end

local function item()
   n = n + 1
   return string.format(
      '{"run_id": "%08x-0000-4000-8000-%012x", "feedback_key": "user_score", ' ..
      '"feedback_config": {"type": "continuous", "min": 0, "max": 1}}',
      tid, n)
end

function request()
   local body
   if batch == 1 then
      body = item()
   else
      local items = {}
      for i = 1, batch do
         items[i] = item()
      end
      body = "[" .. table.concat(items, ", ") .. "]"
   end
   return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, ' ..
      '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes, e.status,
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
