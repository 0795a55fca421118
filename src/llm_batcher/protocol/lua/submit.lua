-- SUBMIT: queue a new task.
-- KEYS[1] tasks stream, KEYS[2] task hash, KEYS[3] arrivals list
-- ARGV[1] task_id, ARGV[2] context, ARGV[3] created_ms, ARGV[4] deadline_ms, ARGV[5] max_queue,
-- ARGV[6] ttl_ms, ARGV[7] preview (what /stats shows of the context),
-- ARGV[8] owner (hash of the API key that submitted it; '' when keys are off)
-- Returns the stream entry id, or false when max_queue tasks are queued or running.
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[5]) then return false end
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('duplicate task id') end
local entry = redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[1])
redis.call('HSET', KEYS[2], 'context', ARGV[2], 'state', STATE_QUEUED, 'created_ms', ARGV[3],
  'deadline_ms', ARGV[4], 'entry', entry, 'attempt', 0, 'tokens', 0, 'preview', ARGV[7])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[2], 'owner', ARGV[8]) end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('LPUSH', KEYS[3], string.match(entry, '^%d+'))
redis.call('LTRIM', KEYS[3], 0, ARRIVALS_KEPT - 1)
return entry
