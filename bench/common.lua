-- Shared by get.lua and set.lua (loaded with dofile from $BENCH_DIR).
--
-- Requests are pre-formatted once per wrk thread in init(), so the client spends as little CPU
-- per request as possible: on a small machine wrk shares the cores with the server under test.
-- done() prints one machine-readable line that bench/http.sh parses:
--   BENCH_RESULT {"requests":...,"duration_us":...,"rps":...,"p50_us":...,...,"err_status":...}
-- wrk counts responses with status >= 400 in errors.status; http.sh fails if it is not 0.

bench = {}

bench.token = os.getenv("BENCH_TOKEN") or error("BENCH_TOKEN is not set")
bench.users = tonumber(os.getenv("BENCH_USERS") or "10000")
bench.prefix = os.getenv("BENCH_USER_PREFIX") or "user-"

local thread_counter = 0

-- Runs in the main Lua state once per thread: give each thread its own random seed.
function setup(thread)
   thread_counter = thread_counter + 1
   thread:set("thread_seed", thread_counter * 7919 + os.time())
end

function bench.seed()
   math.randomseed(thread_seed or os.time())
   -- LuaJIT's first values after seeding are poorly mixed; discard a few.
   for _ = 1, 10 do math.random() end
end

function bench.build(method, path_of, body)
   local requests = {}
   for i = 1, bench.users do
      local headers = { ["Authorization"] = "Bearer " .. bench.token }
      if body then headers["Content-Type"] = "application/json" end
      requests[i] = wrk.format(method, path_of(bench.prefix .. i), headers, body)
   end
   return requests
end

function done(summary, latency, requests)
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"rps":%.1f,' ..
      '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
      '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
      summary.requests, summary.duration, summary.bytes, summary.requests / secs,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
