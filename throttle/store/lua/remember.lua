-- A decision made without the store (a TCF refusal, Art. 22, or while the store
-- was failing): append it to the person's recent decisions, and keep their choices longer.
--
-- KEYS[1]  the person's record, KEYS[2] their choices (see record.lua), KEYS[3] the
--          tombstone of their last erasure: its time, ms since the Unix epoch (see erase)
-- ARGV[1]  the fingerprint of the decision's entry, kept under "<prefix>recent:<fingerprint>"
--          ("": only keep the choices longer)
-- ARGV[2]  when, ms since the Unix epoch
-- ARGV[3]  how many recent decisions to keep
-- ARGV[4]  how long recent decisions are kept, ms
-- ARGV[5]  how long choices are kept after the person's last decision, ms
-- ARGV[6]  a fresh random audit token, taken when the person has none
-- Returns  the person's audit token, or "" (also for a decision erased since it was made)

-- A decision made at or before the person's erasure, written after it by whichever worker
-- made it, must not bring them back.
local erased = redis.call('GET', KEYS[3])
if erased and tonumber(ARGV[2]) <= tonumber(erased) then return '' end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
local core = decode_record(redis.call('GET', KEYS[1]))
if ARGV[1] == '' or tonumber(ARGV[3]) <= 0 then return core.k or '' end
if not core.k and ARGV[6] ~= '' then core.k = ARGV[6] end
core.r = remembered(
  core.r, tonumber(ARGV[2]), ARGV[1], '!', 0, tonumber(ARGV[3]), tonumber(ARGV[2]) - tonumber(ARGV[4]))
local keep = redis.call('PTTL', KEYS[1])
if tonumber(ARGV[4]) > keep then keep = tonumber(ARGV[4]) end
write_record(KEYS[1], core, keep)
return core.k
