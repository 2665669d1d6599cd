-- A person's record, "<prefix>{<pseudonym>}": a msgpack map
--   t  base time, ms since the Unix epoch; the times in c and b are offsets from it
--   c  counters: { [name] = { delivery time, ... } }, e.g. c["c:email"]
--   b  budget: { { delivery time, score (thousandths) }, ... }
--   k  the random token that names the person in the audit trail
--   r  their recent decisions, oldest first, RECENT_SIZE bytes each (see layout.py): when,
--      the fingerprint of what the message's decisions share (kept once, under
--      "<prefix>recent:<fingerprint>"), how it came out, its score
-- It lives as long as the longer of its parts needs: counters their longest window, recent
-- decisions the trail's age.
-- The person's choices, "<prefix>{<pseudonym>}:choices" in the same slot: a msgpack map,
--   l level (0 off, 1 minimal, 2 standard, 3 full; absent: the policy's default), u when they
--   chose it, g when they first sent a GPC opt-out, s { [category] = when they consented }.
-- Kept apart, `keep` after the person's last decision: choices outlive counters on purpose,
-- and counters and decisions must not live as long as choices do.

local function decode_record(raw)
  if not raw then return {} end
  return cmsgpack.unpack(raw)
end

-- The recent decisions with one more: the newest `keep` of them, none older than `oldest`.
local function remembered(recent, now, fingerprint, key, score, keep, oldest)
  local record = struct.pack('>I6', now) .. fingerprint
    .. key .. string.rep(' ', 6 - #key) .. struct.pack('>I2', score)
  recent = (recent or '') .. record
  if #recent > keep * RECENT_SIZE then
    recent = string.sub(recent, -keep * RECENT_SIZE)
  end
  -- Oldest first: drop from the front those the trail would no longer keep.
  local from = 1
  while from < #recent and struct.unpack('>I6', recent, from) <= oldest do
    from = from + RECENT_SIZE
  end
  if from > 1 then recent = string.sub(recent, from) end
  return recent
end

local function write_record(key, core, ttl)
  if ttl <= 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, cmsgpack.pack(core), 'PX', ttl)
  end
end
