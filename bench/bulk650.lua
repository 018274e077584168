-- POST /v1.0/communications/getPresencesByUserId with IDS (default 650) random users per request.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/common.lua")

local ids = tonumber(os.getenv("BENCH_IDS") or "650")
local headers

function init(args)
   bench.seed()
   headers = { ["Authorization"] = "Bearer " .. bench.token, ["Content-Type"] = "application/json" }
end

function request()
   local list = {}
   for i = 1, ids do
      list[i] = '"' .. bench.prefix .. math.random(bench.users) .. '"'
   end
   return wrk.format("POST", "/v1.0/communications/getPresencesByUserId", headers,
      '{"ids":[' .. table.concat(list, ",") .. ']}')
end
