-- A person's record, "<prefix>{<pseudonym>}": a msgpack array, shortened from the end where
-- its last fields are empty (false where an earlier one is), so a typical one stays small:
--   1 t  base time, whole seconds since the Unix epoch; the times in c and b are ms after it
--   2 c  counters: { [name] = { delivery time, ... } }, e.g. c["c:email"]
--   3 b  budget: { delivery time, score (thousandths), delivery time, score, ... }
--   4 k  the random token that names the person in the audit trail
--   5 r  their recent decisions, oldest first, RECENT_SIZE bytes each (see layout.py): when,
--        the fingerprint of what the message's decisions share (kept once, under
--        "<prefix>recent:<fingerprint>"), how it came out, its score
--   6 v  reservations not yet committed: { [id] = { delivery time, expiry, budget spend
--        (thousandths), name of each counter it was counted in, ... } }; its entries are in c
--        and b like any delivery's, and a release or the expiry takes exactly them back out
-- The scripts read it as a table with those names, `t` in ms.
-- It lives as long as the longer of its parts needs: counters their longest window, recent
-- decisions the trail's age.
-- The person's choices, "<prefix>{<pseudonym>}:choices" in the same slot: a msgpack map,
--   l level (0 off, 1 minimal, 2 standard, 3 full; absent: the policy's default), u when they
--   chose it, g when they first sent a GPC opt-out, s { [category] = when they consented }.
-- Kept apart, `keep` after the person's last decision: choices outlive counters on purpose,
-- and counters and decisions must not live as long as choices do.

local function decode_record(raw)
  if not raw then return {} end
  local fields = cmsgpack.unpack(raw)
  return {
    t = fields[1] * 1000, c = fields[2] or nil, b = fields[3] or nil, k = fields[4] or nil,
    r = fields[5] or nil, v = fields[6] or nil,
  }
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

local function pack_record(core)
  local fields = {
    math.floor((core.t or 0) / 1000), core.c or false, core.b or false, core.k or false,
    core.r or false, core.v or false,
  }
  local last = 6
  while last > 1 and fields[last] == false do
    fields[last] = nil
    last = last - 1
  end
  return cmsgpack.pack(fields)
end

local function write_record(key, core, ttl)
  if ttl <= 0 then
    redis.call('DEL', key)
    return
  end
  redis.call('SET', key, pack_record(core), 'PX', ttl)
end

-- Takes one reservation's entries back out: one delivery time from each counter it was
-- counted in, and its spend from the budget entry holding it (its own, or the one a merge of
-- the oldest entries folded it into: the oldest at or after its time holding as much).
local function unreserve(core, held)
  local at, logs = held[1], core.c
  for i = 4, #held do
    local log = logs and logs[held[i]]
    if log then
      for j = 1, #log do
        if log[j] == at then
          table.remove(log, j)
          break
        end
      end
      if #log == 0 then logs[held[i]] = nil end
    end
  end
  if logs and next(logs) == nil then core.c = nil end
  local spend, budget = held[3], core.b
  if spend > 0 and budget then
    local found = nil
    for j = 1, #budget, 2 do
      if budget[j] >= at and budget[j + 1] >= spend and (not found or budget[j] < budget[found]) then
        found = j
      end
    end
    if found then
      budget[found + 1] = budget[found + 1] - spend
      if budget[found + 1] == 0 then
        table.remove(budget, found + 1)
        table.remove(budget, found)
      end
    end
    if #budget == 0 then core.b = nil end
  end
end

-- Releases the reservations whose hold ran out by `rel`; true when there were any.
local function expire_reservations(core, rel)
  local expired = false
  for id, held in pairs(core.v) do
    if held[2] <= rel then
      unreserve(core, held)
      core.v[id] = nil
      expired = true
    end
  end
  if next(core.v) == nil then core.v = nil end
  return expired
end
