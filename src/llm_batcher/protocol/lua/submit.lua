-- SUBMIT: queue a new task.
-- KEYS[1] tasks stream, KEYS[2] task hash, KEYS[3] arrivals list,
-- KEYS[4] (optional) the request's idempotency key
-- ARGV[1] task_id, ARGV[2] context, ARGV[3] created_ms, ARGV[4] deadline_ms, ARGV[5] max_queue,
-- ARGV[6] ttl_ms, ARGV[7] preview (what /stats shows of the context),
-- ARGV[8] owner (hash of the API key that submitted it; '' when keys are off),
-- ARGV[9] max_tokens (the request's cap on the answer; '' for none),
-- ARGV[10] stop (JSON list of stop sequences; '' for none),
-- ARGV[11] (with KEYS[4]) the request's fingerprint, ARGV[12] (optional, without KEYS[4]) the
-- task's result channel, which its client subscribed to before this call
-- Returns the stream entry id, or false when max_queue tasks are queued or running; with
-- ARGV[12], {entry id, subscribers of the channel now}: 1 says that the client's subscription
-- was in place before the task existed, so every announcement of the task reaches it.
-- With an idempotency key, returns {SUBMIT_QUEUED, entry id} or {SUBMIT_QUEUE_FULL}, unless the
-- key already names a task Redis still knows: then {SUBMIT_EXISTING, its id, its deadline_ms}
-- for the same fingerprint, {SUBMIT_CONFLICT, its id} for another, and nothing is queued. Two
-- retries racing each other therefore never make two tasks.
local keyed = #KEYS >= 4
if keyed then
  local held = redis.call('GET', KEYS[4])
  if held then
    local sep = string.find(held, ' ', 1, true)
    local task_id = string.sub(held, 1, sep - 1)
    local task_prefix = string.sub(KEYS[2], 1, #KEYS[2] - #ARGV[1])
    local deadline = redis.call('HGET', task_prefix .. task_id, 'deadline_ms')
    if deadline then
      if string.sub(held, sep + 1) ~= ARGV[11] then return {SUBMIT_CONFLICT, task_id} end
      return {SUBMIT_EXISTING, task_id, deadline}
    end
    -- the task has expired (an error before its first token goes after a minute): a new one
  end
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  if keyed then return {SUBMIT_QUEUE_FULL} end
  return false
end
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('duplicate task id') end
local entry = redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[1])
redis.call('HSET', KEYS[2], 'context', ARGV[2], 'state', STATE_QUEUED, 'created_ms', ARGV[3],
  'deadline_ms', ARGV[4], 'entry', entry, 'attempt', 0, 'tokens', 0, 'preview', ARGV[7])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[2], 'owner', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[2], 'max_tokens', ARGV[9]) end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[2], 'stop', ARGV[10]) end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('LPUSH', KEYS[3], string.match(entry, '^%d+'))
redis.call('LTRIM', KEYS[3], 0, ARRIVALS_KEPT - 1)
if keyed then
  redis.call('SET', KEYS[4], ARGV[1] .. ' ' .. ARGV[11], 'PX', ARGV[6])
  return {SUBMIT_QUEUED, entry}
end
if ARGV[12] and ARGV[12] ~= '' then
  return {entry, redis.call('PUBSUB', 'NUMSUB', ARGV[12])[2]}
end
return entry
