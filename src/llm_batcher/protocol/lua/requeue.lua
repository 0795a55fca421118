-- REQUEUE: queue a dead letter again as a fresh run of the same task: same id, context, owner
-- and limits; attempt 0 and none handed back (HAND_BACK), so that it gets max_attempts afresh and
-- a hand-back of its new attempts is not refused as one of the old; its answer so far (tokens and
-- terminal error) deleted, so that a client reading it from the start gets the new run's answer
-- alone; a deadline as long as the first.
-- KEYS[1] task hash, KEYS[2] result stream, KEYS[3] tasks stream, KEYS[4] dead-letter index
-- ARGV[1] task_id, ARGV[2] now_ms, ARGV[3] ttl_ms, ARGV[4] max_queue
-- Returns {REQUEUE_OK, deadline_ms}, or {why} with why 'not_dead' or 'queue_full'.
if not redis.call('ZSCORE', KEYS[4], ARGV[1]) then return {REQUEUE_NOT_DEAD} end
local f = redis.call('HMGET', KEYS[1], 'state', 'created_ms', 'deadline_ms')
if f[1] ~= STATE_ERROR or redis.call('HEXISTS', KEYS[1], 'context') == 0 then
  redis.call('ZREM', KEYS[4], ARGV[1])  -- expired, or trimmed from the index meanwhile
  return {REQUEUE_NOT_DEAD}
end
if redis.call('XLEN', KEYS[3]) >= tonumber(ARGV[4]) then return {REQUEUE_QUEUE_FULL} end
local now = tonumber(ARGV[2])
local deadline = now + (tonumber(f[3]) - tonumber(f[2]))
redis.call('DEL', KEYS[2])
local entry = redis.call('XADD', KEYS[3], '*', 'task_id', ARGV[1])
redis.call('HDEL', KEYS[1], 'code', 'started_ms', 'first_token_ms', 'worker', 'handed_back',
  'handed_back_at')
redis.call('HSET', KEYS[1], 'state', STATE_QUEUED, 'created_ms', now, 'deadline_ms', deadline,
  'entry', entry, 'attempt', 0, 'tokens', 0)
redis.call('HINCRBY', KEYS[1], 'requeues', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return {REQUEUE_OK, deadline}
