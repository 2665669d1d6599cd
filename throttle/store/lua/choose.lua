-- Record a change a person makes to what they allow, in their choices (see deliver.lua).
--
-- KEYS[1]  the person's choices: "<prefix>{<pseudonym>}:choices", a msgpack map
-- ARGV[1]  the change: "level" (ARGV[2] the level: 0 off, 1 minimal, 2 standard, 3 full),
--          "consent" or "withdraw" (ARGV[2] a special category), "opt-out" (a GPC opt-out was
--          seen: kept from its first time on), "opt-in" (the person clears it themselves)
-- ARGV[3]  now, ms since the Unix epoch
-- ARGV[4]  how long choices are kept after the person's last decision, ms
-- Choices that come to nothing are deleted rather than kept empty.

local choices = {}
local raw = redis.call('GET', KEYS[1])
if raw then choices = cmsgpack.unpack(raw) end
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
if next(choices) == nil then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], cmsgpack.pack(choices), 'PX', tonumber(ARGV[4]))
end
return 1
