-- HAND_BACK: a worker that stops in order (drain) hands back a task it started, and its attempt
-- no longer counts against max_attempts: a scale-down is not a failure of the task.
-- KEYS[1] task hash
-- ARGV[1] attempt (the fence: only the attempt that is running may be handed back)
-- Returns 1 if it refunded the attempt, else 0 (the task ended, moved on, or was refunded).
-- `handed_back` counts the refunded attempts; `handed_back_at` the last one, so that a retried
-- call refunds nothing twice. `attempt` itself never goes down: it stays the fencing token.
local f = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'handed_back_at')
if f[1] ~= STATE_RUNNING or f[2] ~= ARGV[1] or f[3] == ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'handed_back', 1)
redis.call('HSET', KEYS[1], 'handed_back_at', ARGV[1])
return 1
