-- DEPTH: how many tasks wait and how many live workers hold.
-- KEYS[1] tasks stream
-- ARGV[1] lease_ms, ARGV[2] most pending entries to inspect
-- Returns {stream length, pending, pending idle for longer than a lease (their worker is gone)}.
local length = redis.call('XLEN', KEYS[1])
local summary = redis.pcall('XPENDING', KEYS[1], WORKER_GROUP)
if type(summary) ~= 'table' or summary.err then return {length, 0, 0} end
local pending = tonumber(summary[1])
local stale = 0
if pending > 0 then
  stale = #redis.call('XPENDING', KEYS[1], WORKER_GROUP, 'IDLE', ARGV[1], '-', '+', ARGV[2])
end
return {length, pending, stale}
