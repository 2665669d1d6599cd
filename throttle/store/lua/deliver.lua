-- Check every frequency cap and the creepiness budget of one person, and record the message
-- if all pass. Atomic: concurrent decisions for one person never both take the last slot.
-- The decision also goes into the person's recent decisions, so the audit trail costs the
-- decision path no command of its own.
--
-- KEYS[1]  the person's record, KEYS[2] their choices (see record.lua)
-- ARGV     see DeliverArg in throttle/store/layout.py; the limits (ARGV[ARG_LIMITS]) are a
--          msgpack array laid out by Limit there. Times in ms, scores in thousandths.
-- Returns  { verdict, cap index or -1, total score, earlier deliveries counted,
--            1 when the person's choices restrict them (level off or minimal, GPC opt-out),
--            the person's level, their audit token or "" }
--          verdict: 0 delivered, 1 frequency cap, 2 budget, 3 creepiness, 4 the person's level
--          (with the level, 0 or 1, in place of the cap index), 5 a special category without
--          consent (with its index in ARGV[ARG_SPECIAL]), 6 the GPC opt-out, 7 the calculus

local now = tonumber(ARGV[ARG_NOW])
local limits = cmsgpack.unpack(ARGV[ARG_LIMITS])
local ttl, counters = limits[LIMIT_TTL], limits[LIMIT_COUNTERS]
local flags = tonumber(ARGV[ARG_FLAGS])
local content_score = tonumber(ARGV[ARG_SCORE])

-- One read for both keys (one slot): the record and the choices.
local values = redis.call('MGET', KEYS[1], KEYS[2])
local core = decode_record(values[1])
local base = core.t or 0
local logs = core.c or {}
for _, log in pairs(logs) do
  for i = 1, #log do log[i] = log[i] + base end
end
local budget_entries = core.b or {}
for _, entry in ipairs(budget_entries) do entry[1] = entry[1] + base end

local dirty = false
local prefs = nil
if values[2] then prefs = cmsgpack.unpack(values[2]) end
if bit.band(flags, FLAG_GPC_NOW) ~= 0 and not (prefs and prefs.g) then
  -- Kept from its first time, before the answer leaves, so every worker honours it at once.
  prefs = prefs or {}
  prefs.g = now
  redis.call('SET', KEYS[2], cmsgpack.pack(prefs), 'PX', limits[LIMIT_KEEP_CHOICE])
elseif prefs then
  -- A choice is kept for its time after the person's last decision, whatever it decides.
  redis.call('PEXPIRE', KEYS[2], limits[LIMIT_KEEP_CHOICE])
end
local level = (prefs and prefs.l) or limits[LIMIT_DEFAULT_LEVEL]
-- Whether the person's choices restrict what they may get (level off or minimal, a GPC
-- opt-out): the engine must not fail open for them when it cannot ask.
local restricted = (prefs and (level < 2 or prefs.g)) and 1 or 0

local fingerprint = ARGV[ARG_RECENT]
local per_person = limits[LIMIT_RECENT_PER_PERSON]
local remembering = fingerprint ~= '' and per_person > 0
if remembering and not core.k and ARGV[ARG_TOKEN] ~= '' then
  core.k = ARGV[ARG_TOKEN]
  dirty = true
end

local function in_band(score)
  local band = limits[LIMIT_BAND]
  return #band > 0 and band[2 * level - 1] < score and score <= band[2 * level]
end

-- How long the record must live: the longer of what it holds.
local function lifetime()
  local keep = 0
  if core.c or core.b then keep = ttl end
  if core.r and limits[LIMIT_RECENT_KEEP] > keep then keep = limits[LIMIT_RECENT_KEEP] end
  return keep
end

-- Stores the times as offsets from a base, the oldest instant still counted, so that most
-- take 5 bytes of msgpack instead of 9: a person's record stays small.
local function store_times()
  local stored_base = now - ttl
  local stored_logs, any_log = {}, false
  for name, log in pairs(logs) do
    if #log > 0 then
      local stored = {}
      for i = 1, #log do stored[i] = log[i] - stored_base end
      stored_logs[name] = stored
      any_log = true
    end
  end
  local stored_budget = {}
  for i, entry in ipairs(budget_entries) do stored_budget[i] = { entry[1] - stored_base, entry[2] } end
  core.t = stored_base
  core.c = any_log and stored_logs or nil
  core.b = #stored_budget > 0 and stored_budget or nil
end

-- Ends the script: records what changed and answers.
local function finish(verdict, index, score, repetitions, key, changed)
  if remembering then
    core.r = remembered(core.r, now, fingerprint, key, score, per_person)
    changed = true
  end
  if changed or dirty then
    store_times()
    write_record(KEYS[1], core, lifetime())
  end
  return { verdict, index, score, repetitions, restricted, level, core.k or '' }
end

if level == 0 or (level == 1 and bit.band(flags, FLAG_MINIMAL_OK) == 0) then
  return finish(4, level, content_score, 0, 'p' .. level, false)
end
if bit.band(flags, FLAG_GPC_FORBIDS) ~= 0 and prefs and prefs.g then
  return finish(6, -1, content_score, 0, 'o', false)
end
local consented = (prefs and prefs.s) or {}
local special_index = 0
for category in string.gmatch(ARGV[ARG_SPECIAL], '%S+') do
  if not consented[category] then
    return finish(5, special_index, content_score, 0, 'x' .. special_index, false)
  end
  special_index = special_index + 1
end
local threshold = limits[LIMIT_THRESHOLD]
if level == 1 then
  threshold = limits[LIMIT_MINIMAL_THRESHOLD]
elseif level == 3 then
  threshold = limits[LIMIT_FULL_THRESHOLD]
end
if bit.band(flags, FLAG_TRANSACTIONAL) ~= 0 then
  -- Transactional: the person's level and threshold apply; caps and budget do not.
  if content_score > threshold then return finish(3, -1, content_score, 0, 's', false) end
  return finish(0, -1, content_score, 0, 't', false)
end

local function younger_than(log, window)
  local count, oldest = 0, now - window
  for i = 1, #log do
    if log[i] > oldest then count = count + 1 end
  end
  return count
end

-- Entries younger than `window`, the newest `keep` of them, oldest first.
local function pruned(log, window, keep)
  local kept, oldest = {}, now - window
  for i = 1, #(log or {}) do
    if log[i] > oldest then kept[#kept + 1] = log[i] end
  end
  if #kept > keep then
    table.sort(kept)
    local newest = {}
    for i = #kept - keep + 1, #kept do newest[#newest + 1] = kept[i] end
    kept = newest
  end
  return kept
end

local touched = {}  -- counter name -> its shadow flag
for i = 1, #counters do
  local counter = counters[i]
  logs[counter[1]] = pruned(logs[counter[1]], counter[3], counter[2])
  touched[counter[1]] = counter[5]
end

local repetitions = 0
if limits[LIMIT_REPETITION_COUNTER] ~= '' then
  repetitions = math.min(
    younger_than(logs[limits[LIMIT_REPETITION_COUNTER]] or {}, limits[LIMIT_REPETITION_WINDOW]),
    limits[LIMIT_REPETITION_SATURATION])
end
local score = math.min(1000, content_score + limits[LIMIT_REPETITION_WEIGHT] * repetitions)
if score > threshold then
  return finish(3, -1, score, repetitions, 's', false)
end
local relevance = tonumber(ARGV[ARG_RELEVANCE])
if relevance >= 0 then
  -- relevance x (1 + trust) > lambda x creepiness, all in thousandths
  local trust = limits[LIMIT_TRUST_SIGNED_IN] + ((prefs and prefs.l) and limits[LIMIT_TRUST_DECLARED] or 0)
  if relevance * (1000 + trust) <= limits[LIMIT_LAMBDA][level] * score then
    return finish(7, -1, score, repetitions, 'k', false)
  end
end

local period_starts = {}
for start in string.gmatch(ARGV[ARG_PERIODS], '%d+') do period_starts[#period_starts + 1] = tonumber(start) end

-- The first full cap, in policy order, among the enforced (shadow = 0) or shadow (1) ones.
local function refused_by(shadow)
  local first = -1
  for i = 1, #counters do
    local counter = counters[i]
    local log = logs[counter[1]]
    for _, cap in ipairs(counter[4]) do
      if counter[5] == shadow and (first < 0 or cap[1] < first) then
        local window = cap[3]
        -- A calendar cap counts what is at or after its period's start.
        if cap[4] > 0 then window = now - period_starts[cap[4]] + 1 end
        if younger_than(log, window) >= cap[2] then first = cap[1] end
      end
    end
  end
  return first
end

local refused = refused_by(0)
if refused >= 0 then
  return finish(1, refused, score, repetitions, 'c' .. refused, false)
end

if limits[LIMIT_BUDGET_LIMIT] >= 0 then
  local kept, spent, oldest = {}, 0, now - limits[LIMIT_BUDGET_WINDOW]
  for _, entry in ipairs(budget_entries) do
    if entry[1] > oldest then
      kept[#kept + 1] = entry
      spent = spent + entry[2]
    end
  end
  if spent + score > limits[LIMIT_BUDGET_LIMIT] then
    return finish(2, -1, score, repetitions, 'b', false)
  end
  budget_entries = kept
  if score > 0 then
    budget_entries[#budget_entries + 1] = { now, score }
    if #budget_entries > limits[LIMIT_BUDGET_ENTRIES] then
      -- Oldest first; equal times by score, so every store merges the same two entries.
      table.sort(budget_entries, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
      budget_entries[2] = { budget_entries[2][1], budget_entries[1][2] + budget_entries[2][2] }
      table.remove(budget_entries, 1)
    end
  end
end

if limits[LIMIT_BUDGET_LIMIT] < 0 then budget_entries = {} end

local shadow_refused = -1
if limits[LIMIT_SHADOW_CAPS] == 1 then shadow_refused = refused_by(1) end
local verdict, key = 0, 'a'
if shadow_refused >= 0 then
  verdict, key = 1, 'c' .. shadow_refused
  if in_band(score) then key = 'g' end
elseif in_band(score) then
  key = 'g'
end

if ttl <= 0 then
  logs, budget_entries = {}, {}
  return finish(verdict, shadow_refused, score, repetitions, key, true)
end
-- Counters this message did not touch are pruned by the longest window, so nothing outlives it.
for name, log in pairs(logs) do
  local shadow = touched[name]
  if shadow == nil then
    logs[name] = pruned(log, ttl, #log)
  elseif shadow == 0 or shadow_refused < 0 then
    log[#log + 1] = now
  end
end
return finish(verdict, shadow_refused, score, repetitions, key, true)
