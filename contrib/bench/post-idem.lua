-- wrk script: POST /increment with a random key out of 100000 and a unique
-- Idempotency-Key on every request, so that every request also stores a
-- kept response (tallyd) and none is a replay.  The bodies are formatted
-- once in init(); the header changes per request, so wrk.format() runs
-- for each one (the same cost for every server under this load).

local nkeys = 100000
local bodies = {}
local prefix
local n = 0

function init(args)
   for i = 0, nkeys - 1 do
      bodies[i + 1] = '{"key":"k' .. i .. '","value":1}'
   end
   -- Threads and runs start in the same second: mix in this thread's
   -- table address, and put it in the keys so threads never share one.
   local addr = tostring({}):match("0x(%x+)") or "0"
   math.randomseed(os.time() + tonumber(addr:sub(-6), 16))
   prefix = string.format("%x-%x-", os.time(), math.random(0, 0x7fffffff))
      .. addr .. "-"
end

function request()
   n = n + 1
   return wrk.format("POST", "/increment", {
      ["Content-Type"] = "application/json",
      ["Idempotency-Key"] = prefix .. n
   }, bodies[math.random(nkeys)])
end
