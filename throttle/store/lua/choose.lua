-- Record a change a person makes to what they allow, keeping everything else in their state.
--
-- KEYS[1]  the person's state (see deliver.lua)
-- ARGV[1]  the change: "level" (ARGV[2] the level: 0 off, 1 minimal, 2 standard, 3 full),
--          "consent" or "withdraw" (ARGV[2] a special category), "opt-out" (a GPC opt-out was
--          seen: kept from its first time on), "opt-in" (the person clears it themselves)
-- ARGV[3]  now, ms since the Unix epoch
-- ARGV[4]  how long choices are kept after the person's last decision, ms
-- The state keeps the longer of its own expiry and ARGV[4]: a choice outlives counters.

local state = { t = 0 }
local raw = redis.call('GET', KEYS[1])
if raw then state = cmsgpack.unpack(raw) end
local choices = state.p or {}
local consented = {}
for category, since in pairs(choices.s or {}) do consented[category] = since end
local change, now = ARGV[1], tonumber(ARGV[3])
if change == 'level' then
  choices.l = tonumber(ARGV[2])
  choices.u = now
elseif change == 'consent' then
  consented[ARGV[2]] = now
elseif change == 'withdraw' then
  consented[ARGV[2]] = nil
elseif change == 'opt-out' then
  choices.g = choices.g or now
elseif change == 'opt-in' then
  choices.g = nil
else
  return redis.error_reply('unknown change ' .. change)
end
choices.s = next(consented) and consented or nil
state.p = next(choices) and choices or nil
local keep = math.max(tonumber(ARGV[4]), redis.call('PTTL', KEYS[1]))
redis.call('SET', KEYS[1], cmsgpack.pack(state), 'PX', keep)
return 1
