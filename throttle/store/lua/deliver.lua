-- Check every frequency cap and the creepiness budget of one person, and record the message
-- if all pass. Atomic: concurrent decisions for one person never both take the last slot.
--
-- KEYS[1]  the person's state: "<prefix>{<pseudonym>}", a msgpack map
--            t = base time (ms since the Unix epoch); the times below are offsets from it
--            c = { [counter] = { delivery time, ... } }   e.g. c["c:email"]
--            b = { { delivery time, score (thousandths) }, ... }
-- KEYS[2]  the person's choices: "<prefix>{<pseudonym>}:choices", a msgpack map, in the same
--          slot: l = personalization level (0 off, 1 minimal, 2 standard, 3 full; absent: the
--          policy's default) and u = when they chose it, g = when they first sent a GPC
--          opt-out, s = { [special category] = when they consented }. Kept apart so that
--          counters expire by their windows while choices last as long as the person returns.
-- ARGV[1]  now, ms since the Unix epoch
-- ARGV[2]  the message's score before repetition, thousandths (0..1000)
-- ARGV[3]  the limits, a msgpack array (the same for every message of a channel and campaign):
--            1 ttl of the state, ms: the policy's longest window (0: keep nothing)
--            2 threshold, thousandths: a total above it is refused (verdict 3)
--            3 repetition counter, e.g. "k:spring-sale", or "" when repetition is off
--            4 repetition weight, thousandths per earlier delivery
--            5 repetition window, ms
--            6 repetition saturation: earlier deliveries counted at most
--            7 budget limit, thousandths, or -1 for no budget
--            8 budget window, ms
--            9 budget entries kept; beyond it the two oldest merge (over-counting, never under)
--           10 counters: { { name, entries kept, longest window (ms),
--                            { { cap index, limit, window (ms), period }, ... }, shadow }, ... }
--              period: 0 rolling window; 1, 2, 3 the calendar day, week, month (see ARGV[4])
--              shadow: 1 for a counter of caps in shadow mode, 0 otherwise. Shadow caps are
--              checked after every enforced limit; when one refuses, the message is delivered
--              and recorded all the same, except in the shadow counters (verdict 1, its index)
--           11 1 when any counter is a shadow counter, else 0
--           12 threshold at the minimal level, thousandths (2 is the standard level's)
--           13 threshold at the full level, thousandths
--           14 the level of people who chose none
--           15 how long a person's choice is kept after their last decision, ms
--           16 calculus: trust for a signed-in person, thousandths
--           17 calculus: more trust for a person who chose their level, thousandths
--           18 calculus: { lambda at minimal, standard, full }, thousandths
-- ARGV[4]  starts of the person's calendar day, week and month, ms, separated by spaces
--          ("" when no cap is a calendar cap)
-- ARGV[5]  flags: 1 the message uses only data people give themselves (a minimal level allows
--          it), 2 it is transactional (only the person's level applies; nothing is recorded),
--          4 a GPC opt-out rules the message out (refused when the choices hold g)
-- ARGV[6]  the special categories the message uses, separated by spaces: each needs consent
-- ARGV[7]  the message's relevance, thousandths, or -1 (no privacy calculus)
-- Returns  { verdict, cap index or -1, total score (thousandths), earlier deliveries counted,
--            1 when the person's choices restrict them (level off or minimal, GPC opt-out),
--            the person's level }
--          verdict: 0 delivered, 1 frequency cap, 2 budget, 3 creepiness, 4 the person's level
--          (with the level, 0 or 1, in place of the cap index), 5 a special category without
--          consent (with its index in ARGV[6]), 6 the GPC opt-out, 7 the privacy calculus

local now = tonumber(ARGV[1])
local limits = cmsgpack.unpack(ARGV[3])
local ttl, counters = limits[1], limits[10]

local state = {}
local raw = redis.call('GET', KEYS[1])
if raw then
  state = cmsgpack.unpack(raw)
  local base = state.t or 0
  for _, log in pairs(state.c or {}) do
    for i = 1, #log do log[i] = log[i] + base end
  end
  for _, entry in ipairs(state.b or {}) do entry[1] = entry[1] + base end
end
local logs = state.c or {}

local flags = tonumber(ARGV[5])
local content_score = tonumber(ARGV[2])
local prefs = nil
local raw_choices = redis.call('GET', KEYS[2])
if raw_choices then
  prefs = cmsgpack.unpack(raw_choices)
  -- A choice is kept for limits[15] after the person's last decision, whatever it decides.
  redis.call('PEXPIRE', KEYS[2], limits[15])
end
local level = (prefs and prefs.l) or limits[14]
-- Whether the person's choices restrict what they may get (level off or minimal, a GPC
-- opt-out): the engine must not fail open for them when it cannot ask.
local restricted = (prefs and (level < 2 or prefs.g)) and 1 or 0
if level == 0 or (level == 1 and flags % 2 == 0) then
  return { 4, level, content_score, 0, restricted, level }
end
if math.floor(flags / 4) % 2 == 1 and prefs and prefs.g then
  return { 6, -1, content_score, 0, restricted, level }
end
local consented = (prefs and prefs.s) or {}
local special_index = 0
for category in string.gmatch(ARGV[6], '%S+') do
  if not consented[category] then return { 5, special_index, content_score, 0, restricted, level } end
  special_index = special_index + 1
end
local threshold = limits[2]
if level == 1 then threshold = limits[12] elseif level == 3 then threshold = limits[13] end
if math.floor(flags / 2) % 2 == 1 then
  -- Transactional: the person's level and threshold apply; caps and budget do not.
  return { content_score > threshold and 3 or 0, -1, content_score, 0, restricted, level }
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
if limits[3] ~= '' then
  repetitions = math.min(younger_than(logs[limits[3]] or {}, limits[5]), limits[6])
end
local score = math.min(1000, content_score + limits[4] * repetitions)
if score > threshold then
  return { 3, -1, score, repetitions, restricted, level }
end
local relevance = tonumber(ARGV[7])
if relevance >= 0 then
  -- relevance x (1 + trust) > lambda x creepiness, all in thousandths
  local trust = limits[16] + ((prefs and prefs.l) and limits[17] or 0)
  if relevance * (1000 + trust) <= limits[18][level] * score then
    return { 7, -1, score, repetitions, restricted, level }
  end
end

local period_starts = {}
for start in string.gmatch(ARGV[4], '%d+') do period_starts[#period_starts + 1] = tonumber(start) end

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
  return { 1, refused, score, repetitions, restricted, level }
end

local budget_log = {}
if limits[7] >= 0 then
  local spent, oldest = 0, now - limits[8]
  for _, entry in ipairs(state.b or {}) do
    if entry[1] > oldest then
      budget_log[#budget_log + 1] = entry
      spent = spent + entry[2]
    end
  end
  if spent + score > limits[7] then
    return { 2, -1, score, repetitions, restricted, level }
  end
  if score > 0 then
    budget_log[#budget_log + 1] = { now, score }
    if #budget_log > limits[9] then
      -- Oldest first; equal times by score, so every store merges the same two entries.
      table.sort(budget_log, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
      budget_log[2] = { budget_log[2][1], budget_log[1][2] + budget_log[2][2] }
      table.remove(budget_log, 1)
    end
  end
end

local shadow_refused = -1
if limits[11] == 1 then shadow_refused = refused_by(1) end
local verdict = shadow_refused >= 0 and 1 or 0

if ttl <= 0 then
  return { verdict, shadow_refused, score, repetitions, restricted, level }
end

-- Counters this message did not touch are pruned by the longest window, so nothing outlives it.
local kept_logs, any_log = {}, false
for name, log in pairs(logs) do
  local shadow = touched[name]
  if shadow == nil then
    log = pruned(log, ttl, #log)
  elseif shadow == 0 or shadow_refused < 0 then
    log[#log + 1] = now
  end
  if #log > 0 then
    kept_logs[name] = log
    any_log = true
  end
end
-- Times are stored from a base, the oldest instant still counted, so that most take 5 bytes
-- of msgpack instead of 9: a person's state stays small.
local base = now - ttl
for _, log in pairs(kept_logs) do
  for i = 1, #log do log[i] = log[i] - base end
end
local stored_budget = {}
for i, entry in ipairs(budget_log) do stored_budget[i] = { entry[1] - base, entry[2] } end
local packed = { t = base }
if any_log then packed.c = kept_logs end
if #budget_log > 0 then packed.b = stored_budget end
if any_log or #budget_log > 0 then
  redis.call('SET', KEYS[1], cmsgpack.pack(packed), 'PX', ttl)
end
return { verdict, shadow_refused, score, repetitions, restricted, level }
