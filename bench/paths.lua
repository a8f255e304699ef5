-- wrk script for bench/run.py: POST {"score": 1} to a new URL path on every request.
--
--   wrk -t2 -c50 -d5s --latency -s bench/paths.lua http://127.0.0.1:PORT -- PATHS_FILE THREADS MODE
--
-- PATHS_FILE holds one URL path per line. Thread k (0-based) takes lines k, k+THREADS, ... so no
-- two threads ever send the same path. MODE "once": each path is sent at most once (submissions
-- on fresh tokens); when a thread runs out it sends one request to /__tokens_exhausted__ (a 404,
-- so a non-2xx) and stops. MODE "cycle": a thread starts over at the end of its slice (bare and
-- verify-only, which consume nothing); the wraps are counted.
-- For submit rounds bench/run.py appends a response() function that counts answers saying
-- "duplicate": true (a token used twice with the same body gets a 200, not a 409).
-- done() prints one line "BENCH_RESULT {json}" with exact figures for bench/run.py.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   local file, nthreads = args[1], tonumber(args[2])
   mode = args[3] or "once"
   paths = {}
   local i = 0
   for line in io.lines(file) do
      if line ~= "" then
         if i % nthreads == tid then
            paths[#paths + 1] = line
         end
         i = i + 1
      end
   end
   navail = #paths
   sent = 0        -- paths handed out (in "once" mode: tokens used)
   wraps = 0
   exhausted = 0
   duplicates = 0
   pos = 0
   headers = {["Content-Type"] = "application/json"}
   body = '{"score": 1}'
end

function request()
   pos = pos + 1
   if pos > #paths then
      if mode == "cycle" and #paths > 0 then
         pos = 1
         wraps = wraps + 1
      else
         exhausted = exhausted + 1
         wrk.thread:stop()
         return wrk.format("POST", "/__tokens_exhausted__", headers, body)
      end
   end
   sent = sent + 1
   return wrk.format("POST", paths[pos], headers, body)
end

function done(summary, latency, requests)
   local used, wrapped, exh, avail, dups = 0, 0, 0, 0, 0
   for _, t in ipairs(threads) do
      used = used + (t:get("sent") or 0)
      wrapped = wrapped + (t:get("wraps") or 0)
      exh = exh + (t:get("exhausted") or 0)
      avail = avail + (t:get("navail") or 0)
      dups = dups + (t:get("duplicates") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, ' ..
      '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
      '"paths_sent": %d, "paths_available": %d, "wraps": %d, "exhausted": %d, "duplicates": %d}\n',
      summary.requests, summary.duration, summary.bytes, e.status,
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      used, avail, wrapped, exh, dups))
end
