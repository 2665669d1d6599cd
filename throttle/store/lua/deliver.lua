-- Check every frequency cap and the creepiness budget of one person, and record the message
-- if all pass. Atomic: concurrent decisions for one person never both take the last slot.
--
-- KEYS[1]   the person's state: "<prefix>{<pseudonym>}", a msgpack map
--             c = { [counter] = { delivery time (ms), ... } }   e.g. c["c:email"]
--             b = { { delivery time (ms), score (thousandths) }, ... }
-- ARGV[1]   now, ms since the Unix epoch
-- ARGV[2]   the message's score before repetition, thousandths (0..1000)
-- ARGV[3]   ttl of the state, ms: the policy's longest window (0: keep nothing)
-- ARGV[4]   threshold, thousandths: a total above it is refused (verdict 3)
-- ARGV[5]   repetition counter, e.g. "k:spring-sale", or "" when repetition is off
-- ARGV[6]   repetition weight, thousandths per earlier delivery
-- ARGV[7]   repetition window, ms
-- ARGV[8]   repetition saturation: earlier deliveries counted at most
-- ARGV[9]   budget limit, thousandths, or -1 for no budget
-- ARGV[10]  budget window, ms
-- ARGV[11]  budget entries kept; beyond it the two oldest merge (over-counting, never under)
-- ARGV[12]  number of counters N, then N groups of
--             name, entries kept, longest window (ms), number of caps C,
--             then C triples: cap index, limit, window (ms)
-- Returns   { verdict, cap index or -1, total score (thousandths), earlier deliveries counted }
--           verdict: 0 delivered, 1 frequency cap, 2 budget, 3 creepiness

local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[3])

local state = {}
local raw = redis.call('GET', KEYS[1])
if raw then
  state = cmsgpack.unpack(raw)
end
local logs = state.c or {}
local budget_log = state.b or {}

local function younger_than(log, window)
  local count = 0
  local oldest = now - window
  for i = 1, #log do
    if log[i] > oldest then count = count + 1 end
  end
  return count
end

-- Entries younger than `window`, the newest `keep` of them, oldest first.
local function pruned(log, window, keep)
  local kept = {}
  local oldest = now - window
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

local counters = {}
local arg = 13
for _ = 1, tonumber(ARGV[12]) do
  local counter = { name = ARGV[arg], caps = {} }
  local keep, window, cap_count = tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2]), tonumber(ARGV[arg + 3])
  arg = arg + 4
  for c = 1, cap_count do
    counter.caps[c] = { index = tonumber(ARGV[arg]), limit = tonumber(ARGV[arg + 1]), window = tonumber(ARGV[arg + 2]) }
    arg = arg + 3
  end
  logs[counter.name] = pruned(logs[counter.name], window, keep)
  counters[#counters + 1] = counter
end

local repetitions = 0
if ARGV[5] ~= '' then
  repetitions = math.min(younger_than(logs[ARGV[5]] or {}, tonumber(ARGV[7])), tonumber(ARGV[8]))
end
local score = math.min(1000, tonumber(ARGV[2]) + tonumber(ARGV[6]) * repetitions)
if score > tonumber(ARGV[4]) then
  return { 3, -1, score, repetitions }
end

local refused_by = -1
for _, counter in ipairs(counters) do
  for _, cap in ipairs(counter.caps) do
    if younger_than(logs[counter.name], cap.window) >= cap.limit then
      if refused_by < 0 or cap.index < refused_by then refused_by = cap.index end
    end
  end
end
if refused_by >= 0 then
  return { 1, refused_by, score, repetitions }
end

local budget_limit = tonumber(ARGV[9])
if budget_limit >= 0 then
  local oldest = now - tonumber(ARGV[10])
  local spent, kept = 0, {}
  for _, entry in ipairs(budget_log) do
    if entry[1] > oldest then
      kept[#kept + 1] = entry
      spent = spent + entry[2]
    end
  end
  if spent + score > budget_limit then
    return { 2, -1, score, repetitions }
  end
  budget_log = kept
  if score > 0 then
    budget_log[#budget_log + 1] = { now, score }
    if #budget_log > tonumber(ARGV[11]) then
      -- Oldest first; equal times by score, so every store merges the same two entries.
      table.sort(budget_log, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
      budget_log[2] = { budget_log[2][1], budget_log[1][2] + budget_log[2][2] }
      table.remove(budget_log, 1)
    end
  end
else
  budget_log = {}
end

if ttl <= 0 then
  return { 0, -1, score, repetitions }
end

for _, counter in ipairs(counters) do
  local log = logs[counter.name]
  log[#log + 1] = now
end
-- Counters this message did not touch are pruned by the longest window, so nothing outlives it.
local kept_logs, any_log = {}, false
for name, log in pairs(logs) do
  local kept = pruned(log, ttl, #log)
  if #kept > 0 then
    kept_logs[name] = kept
    any_log = true
  end
end
local packed = {}
if any_log then packed.c = kept_logs end
if #budget_log > 0 then packed.b = budget_log end
if any_log or #budget_log > 0 then
  redis.call('SET', KEYS[1], cmsgpack.pack(packed), 'PX', ttl)
end
return { 0, -1, score, repetitions }
