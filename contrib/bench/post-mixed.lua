-- wrk script: 90% POST /increment on a random key out of 100000, 10%
-- GET /increment/{key}.  A GET asks for the key posted 1024 POSTs earlier
-- by this thread, so its increment has been answered (at most -c requests
-- are in flight) and the key exists: no 404 for a key not yet written.
-- Every request is formatted once in init().

local nkeys = 100000
local ringsize = 1024
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
