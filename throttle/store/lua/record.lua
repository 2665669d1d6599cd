-- A person's record, "<prefix>{<pseudonym>}": a msgpack map, then the person's recent
-- decisions, oldest first, each a msgpack string holding a packed audit entry.
--   t  base time, ms since the Unix epoch; the times in c and b are offsets from it
--   c  counters: { [name] = { delivery time, ... } }, e.g. c["c:email"]
--   b  budget: { { delivery time, score (thousandths) }, ... }
--   k  the random token that names the person in the audit trail
--   n  how many recent decisions follow the map
-- It lives as long as the longer of its parts needs: counters their longest window, recent
-- decisions the trail's age.
-- The person's choices, "<prefix>{<pseudonym>}:choices" in the same slot: a msgpack map,
--   l level (0 off, 1 minimal, 2 standard, 3 full; absent: the policy's default), u when they
--   chose it, g when they first sent a GPC opt-out, s { [category] = when they consented }.
-- Kept apart, `keep` after the person's last decision: choices outlive counters on purpose,
-- and counters and decisions must not live as long as choices do.

-- The record's map and its recent decisions (raw), from the key's value.
local function decode_record(raw)
  if not raw then return {}, '' end
  local offset, core = cmsgpack.unpack_one(raw)
  if offset < 0 then return core, '' end
  return core, string.sub(raw, offset + 1)
end

local function read_record(key)
  return decode_record(redis.call('GET', key))
end

-- The recent decisions with `entry` appended, the newest `keep` of them.
local function remembered(core, tail, entry, keep)
  local count = (core.n or 0) + 1
  tail = tail .. cmsgpack.pack(entry)
  local offset = 0
  while count > keep do
    offset = cmsgpack.unpack_one(tail, offset)
    count = count - 1
  end
  core.n = count
  if offset > 0 then return string.sub(tail, offset + 1) end
  return tail
end

local function write_record(key, core, tail, ttl)
  if ttl <= 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, cmsgpack.pack(core) .. tail, 'PX', ttl)
  end
end
