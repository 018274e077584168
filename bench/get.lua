-- GET /v1.0/users/<prefix><n>/presence for a random n in [1, BENCH_USERS] per request.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/common.lua")

local requests

function init(args)
   bench.seed()
   requests = bench.build("GET", function(user) return "/v1.0/users/" .. user .. "/presence" end)
end

function request()
   return requests[math.random(bench.users)]
end
