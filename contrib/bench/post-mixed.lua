-- wrk script: 90% POST /increment on a random key out of 100000, 10%
-- GET /increment/{key}.  A GET asks for the key posted 32768 POSTs
-- earlier by this thread, so that its increment has been answered and the
-- key exists: fewer connections than that are in flight, and 32768 POSTs
-- take longer than the slowest request (0.2 s at 150k requests/s).
-- wrk calls request() once on its first thread before it connects, to
-- count pipelined requests, and never sends what that call returns: the
-- first call of each thread goes unrecorded, or a GET would ask for a key
-- no POST carried (a 404, which counts in wrk's errors).
-- Every request is formatted once in init().

local nkeys = 100000
local ringsize = 32768
local posts, gets, ring = {}, {}, {}
local nposts = 0
local called = false

function init(args)
   local headers = { ["Content-Type"] = "application/json" }
   for i = 0, nkeys - 1 do
      local body = '{"key":"k' .. i .. '","value":1}'
      posts[i + 1] = wrk.format("POST", "/increment", headers, body)
      gets[i + 1] = wrk.format("GET", "/increment/k" .. i)
   end
   local addr = tostring({}):match("0x(%x+)")
   math.randomseed(os.time() + (addr and tonumber(addr:sub(-6), 16) or 0))
end

function request()
   if not called then
      called = true
      return posts[math.random(nkeys)]
   end
   -- The slot about to be overwritten holds the oldest POST.
   local slot = nposts % ringsize + 1
   if nposts >= ringsize and math.random(10) == 1 then
      return gets[ring[slot]]
   end
   local i = math.random(nkeys)
   ring[slot] = i
   nposts = nposts + 1
   return posts[i]
end
