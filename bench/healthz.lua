-- Diagnostic (DIAG=1): GET /healthz. presenced answers it without routing, authentication or the
-- store, so it measures the HTTP stack plus presenced's request-context middleware.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/common.lua")

local req

function init(args)
   req = wrk.format("GET", "/healthz", { ["Authorization"] = "Bearer " .. bench.token })
end

function request()
   return req
end
