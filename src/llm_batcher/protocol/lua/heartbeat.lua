-- HEARTBEAT: record that a worker is alive, and forget workers silent for ten leases.
-- KEYS[1] live workers, KEYS[2] idle workers, KEYS[3] heartbeats (keys.Keys.beats)
-- ARGV[1] worker, ARGV[2] now_ms (the worker's clock), ARGV[3] lease_ms, ARGV[4] break_ms: a
-- longer gap since this worker's last heartbeat starts a new run of heartbeats
-- The heartbeats are kept in Redis's clock, which every worker shares: a worker's judgement that
-- another is dead (take_over.lua) must not depend on how far apart their clocks are.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = now
local previous = redis.call('HGET', KEYS[3], ARGV[1])
if previous then
  local last, began = string.match(previous, '^(%d+),(%d+)$')
  if last and now - tonumber(last) <= tonumber(ARGV[4]) then since = tonumber(began) end
end
redis.call('HSET', KEYS[3], ARGV[1], now .. ',' .. since)
local forget = tonumber(ARGV[2]) - 10 * tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', forget)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', forget)
return since
