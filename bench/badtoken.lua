-- Diagnostic (DIAG=1): GET presence with a token whose signature is wrong. presenced parses the
-- path, fails verification and answers 401 without touching the store, so compared with get.lua
-- this shows the cost of routing + a failed verification versus a full authenticated read.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/common.lua")

local requests

function init(args)
   bench.seed()
   -- Change one character inside the signature (not the last, whose low bits may be padding):
   -- same length and shape, verification fails.
   local t = bench.token
   local i = #t - 10
   local c = t:sub(i, i)
   bench.token = t:sub(1, i - 1) .. (c == "A" and "B" or "A") .. t:sub(i + 1)
   requests = bench.build("GET", function(user) return "/v1.0/users/" .. user .. "/presence" end)
end

function request()
   return requests[math.random(bench.users)]
end
