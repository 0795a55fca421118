-- Shared by the scripts that judge a worker dead by its heartbeat (take_over, take_turn);
-- scripts.py prepends it. A heartbeat (keys.Keys.beats) is "last,since" in Redis's clock, ms:
-- the last beat, and the start of the run of beats without a break that it ends.
local function beat(value)
  local last, since = string.match(value or '', '^(%d+),(%d+)$')
  return tonumber(last), tonumber(since)
end

local function beats_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether a worker may judge others dead: only after beating without a break for a whole
-- silence. When Redis itself (or the judge) was paused, every other worker's heartbeat looks old
-- until they beat again.
local function may_judge(beats, judge, now, silence)
  local last, since = beat(redis.call('HGET', beats, judge))
  return last ~= nil and now - last <= silence and now - since >= silence
end

-- Whether a worker's heartbeat has lapsed (or it has none any more).
local function lapsed(beats, worker, now, silence)
  local last = beat(redis.call('HGET', beats, worker))
  return last == nil or now - last > silence
end
