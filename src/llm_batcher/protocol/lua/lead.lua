-- LEAD: take or keep the operator's lock (one acting replica).
-- KEYS[1] lock
-- ARGV[1] this replica's id, ARGV[2] ttl_ms
-- Returns 1 if this replica holds the lock for ttl_ms from now, else 0.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
