-- wrk script: 90% POST /increment on a random key out of 100000, 10%
-- GET /increment/{key}.  A GET asks for the key posted 32768 POSTs
-- earlier by this thread, so that its increment has been answered and the
-- key exists.  Fewer connections than that are in flight, but one slow
-- request can still be: 1024 POSTs (7 ms at 150k requests/s) were too few
-- where the slowest request took 75 ms, and a GET overtook its POST (404).
-- 32768 is 0.2 s at that rate; a 404 still counts in wrk's errors.
-- Every request is formatted once in init().

local nkeys = 100000
local ringsize = 32768
local posts, gets, ring = {}, {}, {}
local nposts = 0

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
