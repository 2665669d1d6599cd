-- A decision made without the store (quiet hours, a TCF refusal, Art. 22, or while the store
-- was failing): append it to the person's recent decisions, and keep their choices longer.
--
-- KEYS[1]  the person's record, KEYS[2] their choices (see record.lua)
-- ARGV[1]  the decision, a packed audit entry ("": only keep the choices longer)
-- ARGV[2]  how many recent decisions to keep
-- ARGV[3]  how long recent decisions are kept, ms
-- ARGV[4]  how long choices are kept after the person's last decision, ms
-- ARGV[5]  a fresh random audit token, taken when the person has none
-- Returns  the person's audit token, or ""

redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
local core, tail = read_record(KEYS[1])
if ARGV[1] == '' or tonumber(ARGV[2]) <= 0 then return core.k or '' end
if not core.k and ARGV[5] ~= '' then core.k = ARGV[5] end
tail = remembered(core, tail, ARGV[1], tonumber(ARGV[2]))
local keep = redis.call('PTTL', KEYS[1])
if tonumber(ARGV[3]) > keep then keep = tonumber(ARGV[3]) end
write_record(KEYS[1], core, tail, keep)
return core.k
