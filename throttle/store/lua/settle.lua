-- Commits a reservation (its entries stay, as any delivery's) or releases it (its entries in
-- the counters and its budget spend are taken back out), atomically. Reservations whose hold
-- ran out are released on the way, as deliver.lua does.
--
-- KEYS[1]  the person's record (see record.lua)
-- ARGV[1]  the reservation's id; ARGV[2] 1 to commit, 0 to release; ARGV[3] now, ms
-- Returns  1 when the reservation was held, 0 when it was not (never made, already settled,
--          expired, or the record is gone)
-- The record keeps its expiry (deliver.lua set it long enough for every reservation), and
-- goes when nothing is left in it.

local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local core = decode_record(raw)
if not core.v then return 0 end
local rel = tonumber(ARGV[3]) - core.t
local changed = expire_reservations(core, rel)
local held = core.v and core.v[ARGV[1]]
if held then
  if ARGV[2] == '0' then unreserve(core, held) end
  core.v[ARGV[1]] = nil
  if next(core.v) == nil then core.v = nil end
  changed = true
end
if changed then
  if core.c or core.b or core.r or core.v then
    redis.call('SET', KEYS[1], pack_record(core), 'KEEPTTL')
  else
    redis.call('DEL', KEYS[1])
  end
end
if held then return 1 end
return 0
