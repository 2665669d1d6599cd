-- Check every frequency cap and the creepiness budget of one person, and record the message
-- if all pass. Atomic: concurrent decisions for one person never both take the last slot.
-- The decision also goes into the person's recent decisions, so the audit trail costs the
-- decision path no command of its own.
--
-- KEYS[1]  the person's record, KEYS[2] their choices (see record.lua)
-- ARGV     see DeliverArg in throttle/store/layout.py. Times in ms, scores in thousandths.
-- Returns  { verdict, cap index or -1, total score, earlier deliveries counted,
--            1 when the person's choices restrict them (level off or minimal, GPC opt-out),
--            the person's level, their audit token or "", 1 when a reservation was made }
--          verdict: 0 delivered, 1 frequency cap, 2 budget, 3 creepiness, 4 the person's level
--          (with the level, 0 or 1, in place of the cap index), 5 a special category without
--          consent (with its index in ARGV[ARG_SPECIAL]), 6 the GPC opt-out, 7 the calculus,
--          8 the person's quiet hours
-- FLAG_DRY_RUN decides the same and writes nothing. FLAG_RESERVE counts a delivery as the
-- reservation ARGV[ARG_RESERVATION], kept in the record for CALL_HOLD ms unless settled
-- (settle.lua); one whose hold ran out is released by the next script to read the record.
--
-- Every table made costs Redis more than the arithmetic does, so the script makes few: the
-- numbers arrive struct-packed, and a person's counters are pruned and extended in place.

local now, content_score, flags, relevance, day, week, month, hold =
  struct.unpack(CALL_FORMAT, ARGV[ARG_CALL])
local dry_run = bit.band(flags, FLAG_DRY_RUN) ~= 0
local period_starts = { day, week, month }
-- The limits, then the counters and their caps (see layout.py), in one table.
local limit = { struct.unpack(ARGV[ARG_LIMITS_FORMAT], ARGV[ARG_LIMITS]) }
local ttl = limit[LIMIT_TTL]

-- One read for both keys (one slot): the record and the choices.
local values = redis.call('MGET', KEYS[1], KEYS[2])
local core = decode_record(values[1])
-- Times in the record count from its base; `rel` is now, counted the same way.
local base = core.t or now - now % 1000
local rel = now - base

local dirty = false
if core.v and expire_reservations(core, rel) then dirty = true end
local prefs = nil
if values[2] then prefs = cmsgpack.unpack(values[2]) end
if dry_run then
  -- Nothing is written, not even the choices' renewal.
elseif bit.band(flags, FLAG_GPC_NOW) ~= 0 and not (prefs and prefs.g) then
  -- Kept from its first time, before the answer leaves, so every worker honours it at once.
  prefs = prefs or {}
  prefs.g = now
  redis.call('SET', KEYS[2], cmsgpack.pack(prefs), 'PX', limit[LIMIT_KEEP_CHOICE])
elseif prefs then
  -- A choice is kept for its time after the person's last decision, whatever it decides.
  redis.call('PEXPIRE', KEYS[2], limit[LIMIT_KEEP_CHOICE])
end
local level = (prefs and prefs.l) or limit[LIMIT_DEFAULT_LEVEL]
-- Whether the person's choices restrict what they may get (level off or minimal, a GPC
-- opt-out): the engine must not fail open for them when it cannot ask.
local restricted = (prefs and (level < 2 or prefs.g)) and 1 or 0

local fingerprint = ARGV[ARG_RECENT]
local per_person = limit[LIMIT_RECENT_PER_PERSON]
local remembering = fingerprint ~= '' and per_person > 0
if remembering and not core.k and ARGV[ARG_TOKEN] ~= '' then
  core.k = ARGV[ARG_TOKEN]
  dirty = true
end

local reserved = 0

-- Ends the script: records what changed and answers.
local function finish(verdict, index, score, repetitions, key, changed)
  if dry_run then
    return { verdict, index, score, repetitions, restricted, level, core.k or '', 0 }
  end
  if remembering then
    core.r = remembered(
      core.r, now, fingerprint, key, score, per_person, now - limit[LIMIT_RECENT_KEEP])
    changed = true
  elseif core.r then
    core.r = nil  -- the trail is off now: what it kept goes with the next write
  end
  if changed or dirty then
    local logs = core.c
    if logs then
      for name, log in pairs(logs) do
        if #log == 0 then logs[name] = nil end
      end
      if next(logs) == nil then core.c = nil end
    end
    if core.b and #core.b == 0 then core.b = nil end
    local keep = 0
    if core.c or core.b then keep = ttl end
    if core.r and limit[LIMIT_RECENT_KEEP] > keep then keep = limit[LIMIT_RECENT_KEEP] end
    for _, held in pairs(core.v or {}) do
      if held[2] - rel > keep then keep = held[2] - rel end
    end
    if rel > 2147483647 and rel > ttl and (core.c or core.b) then
      -- Offsets past 31 bits take 9 bytes each: count from a newer base (rarely needed).
      local shift = rel - ttl - (rel - ttl) % 1000
      for _, log in pairs(core.c or {}) do
        for i = 1, #log do log[i] = log[i] - shift end
      end
      local budget = core.b or {}
      for i = 1, #budget, 2 do budget[i] = budget[i] - shift end
      for _, held in pairs(core.v or {}) do
        held[1], held[2] = held[1] - shift, held[2] - shift
      end
      base = base + shift
    end
    core.t = base
    write_record(KEYS[1], core, keep)
  end
  return { verdict, index, score, repetitions, restricted, level, core.k or '', reserved }
end

if level == 0 or (level == 1 and bit.band(flags, FLAG_MINIMAL_OK) == 0) then
  return finish(4, level, content_score, 0, 'p' .. level, false)
end
if bit.band(flags, FLAG_GPC_FORBIDS) ~= 0 and prefs and prefs.g then
  return finish(6, -1, content_score, 0, 'o', false)
end
if ARGV[ARG_SPECIAL] ~= '' then
  local consented = (prefs and prefs.s) or {}
  local special_index = 0
  for category in string.gmatch(ARGV[ARG_SPECIAL], '%S+') do
    if not consented[category] then
      return finish(5, special_index, content_score, 0, 'x' .. special_index, false)
    end
    special_index = special_index + 1
  end
end
if bit.band(flags, FLAG_QUIET) ~= 0 then
  return finish(8, -1, content_score, 0, 'q', false)
end
local threshold = limit[LIMIT_THRESHOLD]
if level == 1 then
  threshold = limit[LIMIT_MINIMAL_THRESHOLD]
elseif level == 3 then
  threshold = limit[LIMIT_FULL_THRESHOLD]
end
if bit.band(flags, FLAG_TRANSACTIONAL) ~= 0 then
  -- Transactional: the person's level and threshold apply; caps and budget do not.
  if content_score > threshold then return finish(3, -1, content_score, 0, 's', false) end
  return finish(0, -1, content_score, 0, 't', false)
end

-- Where each counter starts in `limit` (its name, keep, window, shadow, number of caps; then
-- each cap's index, limit, window and period).
local counters = {}
local at = LIMIT_COUNT + 1
while limit[at + 4] do
  counters[#counters + 1] = at
  at = at + COUNTER_FIELDS + CAP_FIELDS * limit[at + 4]
end

local logs = core.c or {}
core.c = logs

-- Drops a log's entries at or before `oldest` and all but its newest `keep`, in place.
local function prune(log, oldest, keep)
  local kept = 0
  for i = 1, #log do
    local t = log[i]
    if t > oldest then
      kept = kept + 1
      log[kept] = t
    end
  end
  for i = #log, kept + 1, -1 do log[i] = nil end
  if kept > keep then
    table.sort(log)
    local drop = kept - keep
    for i = 1, keep do log[i] = log[i + drop] end
    for i = kept, keep + 1, -1 do log[i] = nil end
  end
end

local function younger_than(log, oldest)
  local count = 0
  for i = 1, #log do
    if log[i] > oldest then count = count + 1 end
  end
  return count
end

for i = 1, #counters do
  local at = counters[i]
  local log = logs[limit[at]]
  if log then prune(log, rel - limit[at + 2], limit[at + 1]) end
end

local repetitions = 0
if ARGV[ARG_REPETITION] ~= '' then
  local log = logs[ARGV[ARG_REPETITION]]
  if log then
    repetitions = math.min(
      younger_than(log, rel - limit[LIMIT_REPETITION_WINDOW]), limit[LIMIT_REPETITION_SATURATION])
  end
end
local score = math.min(1000, content_score + limit[LIMIT_REPETITION_WEIGHT] * repetitions)
if score > threshold then
  return finish(3, -1, score, repetitions, 's', false)
end
if relevance >= 0 then
  -- relevance x (1 + trust) > lambda x creepiness, all in thousandths
  local trust = limit[LIMIT_TRUST_SIGNED_IN] + ((prefs and prefs.l) and limit[LIMIT_TRUST_DECLARED] or 0)
  if relevance * (1000 + trust) <= limit[LIMIT_LAMBDA_MINIMAL + level - 1] * score then
    return finish(7, -1, score, repetitions, 'k', false)
  end
end

-- The first full cap, in policy order, among the enforced (shadow = 0) or shadow (1) ones.
local function refused_by(shadow)
  local first = -1
  for i = 1, #counters do
    local at = counters[i]
    if limit[at + 3] == shadow then
      local log = logs[limit[at]]
      local first_cap = at + COUNTER_FIELDS
      for cap = first_cap, first_cap + CAP_FIELDS * (limit[at + 4] - 1), CAP_FIELDS do
        local index = limit[cap]
        if log and (first < 0 or index < first) then
          local oldest = rel - limit[cap + 2]
          -- A calendar cap counts what is at or after its period's start.
          local period = limit[cap + 3]
          if period > 0 then oldest = period_starts[period] - base - 1 end
          if younger_than(log, oldest) >= limit[cap + 1] then first = index end
        end
      end
    end
  end
  return first
end

local refused = refused_by(0)
if refused >= 0 then
  return finish(1, refused, score, repetitions, 'c' .. refused, false)
end

local budget = core.b or {}
local spend = 0
if limit[LIMIT_BUDGET_LIMIT] >= 0 then
  local oldest, spent, kept = rel - limit[LIMIT_BUDGET_WINDOW], 0, 0
  for i = 1, #budget, 2 do
    if budget[i] > oldest then spent = spent + budget[i + 1] end
  end
  if spent + score > limit[LIMIT_BUDGET_LIMIT] then
    return finish(2, -1, score, repetitions, 'b', false)
  end
  for i = 1, #budget, 2 do
    if budget[i] > oldest then
      budget[kept + 1], budget[kept + 2] = budget[i], budget[i + 1]
      kept = kept + 2
    end
  end
  for i = #budget, kept + 1, -1 do budget[i] = nil end
  if score > 0 then
    spend = score
    budget[kept + 1], budget[kept + 2] = rel, score
    if (kept + 2) / 2 > limit[LIMIT_BUDGET_ENTRIES] then
      -- Oldest first; equal times by score, so every store merges the same two entries.
      local pairs_ = {}
      for i = 1, #budget, 2 do pairs_[#pairs_ + 1] = { budget[i], budget[i + 1] } end
      table.sort(pairs_, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
      pairs_[2] = { pairs_[2][1], pairs_[1][2] + pairs_[2][2] }
      table.remove(pairs_, 1)
      for i, entry in ipairs(pairs_) do budget[2 * i - 1], budget[2 * i] = entry[1], entry[2] end
      for i = #budget, 2 * #pairs_ + 1, -1 do budget[i] = nil end
    end
  end
else
  budget = {}
end
core.b = budget

local shadow_refused = -1
if limit[LIMIT_SHADOW_CAPS] == 1 then shadow_refused = refused_by(1) end
local verdict, key = 0, 'a'
if shadow_refused >= 0 then verdict, key = 1, 'c' .. shadow_refused end
if (verdict == 0 or shadow_refused >= 0) and limit[LIMIT_BAND] == 1 then
  local low = limit[LIMIT_BAND_MINIMAL_LOW + 2 * (level - 1)]
  if low < score and score <= limit[LIMIT_BAND_MINIMAL_HIGH + 2 * (level - 1)] then key = 'g' end
end

if ttl <= 0 then
  core.c, core.b = nil, nil
  return finish(verdict, shadow_refused, score, repetitions, key, true)
end
-- Counters this message did not touch are pruned by the longest window, so nothing outlives
-- it; the others count it (a shadow counter not when a shadow cap refused it).
for name, log in pairs(logs) do
  local touched = false
  for i = 1, #counters do
    if limit[counters[i]] == name then touched = true end
  end
  if not touched then prune(log, rel - ttl, #log) end
  if #log == 0 then logs[name] = nil end
end
local held = { rel, rel + hold, spend }
for i = 1, #counters do
  local at = counters[i]
  if limit[at + 3] == 0 or shadow_refused < 0 then
    local name = limit[at]
    local log = logs[name]
    if not log then
      log = {}
      logs[name] = log
    end
    log[#log + 1] = rel
    held[#held + 1] = name
  end
end
if bit.band(flags, FLAG_RESERVE) ~= 0 then
  core.v = core.v or {}
  core.v[ARGV[ARG_RESERVATION]] = held
  reserved = 1
end
return finish(verdict, shadow_refused, score, repetitions, key, true)
