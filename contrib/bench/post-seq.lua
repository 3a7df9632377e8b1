-- wrk script: POST /increment on keys "k0".."k<N-1>" in turn, N from the
-- environment variable BENCH_KEYS (default 100000), starting at a random
-- key.  bench.sh uses it to build a journal backlog that touches every key
-- of the key space, which random keys would not do in a bounded run.

local nkeys = tonumber(os.getenv("BENCH_KEYS") or "") or 100000
local reqs = {}
local next_key

function init(args)
   local headers = { ["Content-Type"] = "application/json" }
   for i = 0, nkeys - 1 do
      local body = '{"key":"k' .. i .. '","value":1}'
      reqs[i + 1] = wrk.format("POST", "/increment", headers, body)
   end
   local addr = tostring({}):match("0x(%x+)")
   math.randomseed(os.time() + (addr and tonumber(addr:sub(-6), 16) or 0))
   next_key = math.random(nkeys) - 1
end

function request()
   local r = reqs[next_key + 1]
   next_key = (next_key + 1) % nkeys
   return r
end
