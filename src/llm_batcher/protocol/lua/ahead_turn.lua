-- AHEAD_TURN: a busy worker takes the read turn to read its next batch ahead, unless another
-- worker is idle: tasks that an idle worker could start now are left to it.
-- KEYS[1] read turn
-- KEYS[2] idle workers (sorted set: worker -> ms when last seen idle)
-- ARGV[1] worker
-- ARGV[2] turn length, ms
-- ARGV[3] oldest "last seen idle" time that still counts, ms
-- Returns 1 if this worker now holds the turn, else 0.
local idle = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[3], '+inf')
for _, name in ipairs(idle) do
  if name ~= ARGV[1] then return 0 end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
