-- POST /v1.0/users/<prefix><n>/presence/setPresence for a random n in [1, BENCH_USERS] per
-- request. Writes to one user serialise in presenced, so the load is spread over many users.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/common.lua")

local body = '{"sessionId":"bench","availability":"Busy","activity":"InACall","expirationDuration":"PT1H"}'
local requests

function init(args)
   bench.seed()
   requests = bench.build("POST", function(user) return "/v1.0/users/" .. user .. "/presence/setPresence" end, body)
end

function request()
   return requests[math.random(bench.users)]
end
