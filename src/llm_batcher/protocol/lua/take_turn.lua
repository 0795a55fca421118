-- TAKE_TURN: become the one worker that reads new tasks (keys.Keys.reader) for a turn, when no
-- worker holds the turn, or when its holder's heartbeat has lapsed: a worker that died holding
-- the turn holds up reading for a heartbeat timeout, not for the rest of its turn (beats.lua
-- prepended).
-- KEYS[1] read turn, KEYS[2] heartbeats
-- ARGV[1] worker, ARGV[2] turn length, ms, ARGV[3] silence_ms: a heartbeat older is lapsed
-- Returns 1 if this worker now holds the turn, else 0.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then return 0 end
local now, silence = beats_now_ms(), tonumber(ARGV[3])
if not may_judge(KEYS[2], ARGV[1], now, silence) or not lapsed(KEYS[2], holder, now, silence) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
