-- Record a person's personalization level in their state, keeping everything else in it.
--
-- KEYS[1]  the person's state (see deliver.lua)
-- ARGV[1]  the level: 0 off, 1 minimal, 2 standard, 3 full
-- ARGV[2]  now, ms since the Unix epoch
-- ARGV[3]  how long the choice is kept after the person's last decision, ms
-- The state keeps the longer of its own expiry and ARGV[3]: a choice outlives counters.

local state = { t = 0 }
local raw = redis.call('GET', KEYS[1])
if raw then state = cmsgpack.unpack(raw) end
state.p = { l = tonumber(ARGV[1]), u = tonumber(ARGV[2]) }
local keep = math.max(tonumber(ARGV[3]), redis.call('PTTL', KEYS[1]))
redis.call('SET', KEYS[1], cmsgpack.pack(state), 'PX', keep)
return 1
