-- wrk script: POST /increment with a random key out of 100000 ("k0".."k99999").
-- Every request is formatted once in init(), so the load generator spends
-- its time sending, not building strings.

local nkeys = 100000
local reqs = {}

function init(args)
   local headers = { ["Content-Type"] = "application/json" }
   for i = 0, nkeys - 1 do
      local body = '{"key":"k' .. i .. '","value":1}'
      reqs[i + 1] = wrk.format("POST", "/increment", headers, body)
   end
   -- Threads start in the same second: mix in this thread's table address.
   local addr = tostring({}):match("0x(%x+)")
   math.randomseed(os.time() + (addr and tonumber(addr:sub(-6), 16) or 0))
end

function request()
   return reqs[math.random(nkeys)]
end
