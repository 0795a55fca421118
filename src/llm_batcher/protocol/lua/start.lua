-- START: begin a worker's attempt at a task it claimed (ending.lua prepended).
-- KEYS[1] task hash, KEYS[2] result stream, KEYS[3] tasks stream, KEYS[4] dead-letter stream,
-- KEYS[5] dead-letter index, KEYS[6] stats
-- ARGV[1] now_ms, ARGV[2] max_attempts, ARGV[3] worker, ARGV[4] ttl_ms, ARGV[5] timeout data,
-- ARGV[6] dead-letter data, ARGV[7] task_id, ARGV[8] the task's entry id, ARGV[9] stats_window_ms
-- Returns {START_RUN, attempt, context, tokens, created_ms, started_ms, first_token_ms,
-- max_tokens, stop, counted} ('' for a limit the task does not have), or {why}
-- with why one of 'missing', 'final', 'not_held' (another worker holds its entry now),
-- 'timeout' (ended it), 'dead' (dead-lettered it).
-- `counted` is the attempts that count against max_attempts, this one included: every attempt
-- but those handed back by a worker that stopped in order (HAND_BACK).
local now = tonumber(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'state', 'deadline_ms', 'context', 'tokens',
  'created_ms', 'started_ms', 'first_token_ms', 'attempt', 'max_tokens', 'stop', 'handed_back')
if not f[1] then return {START_MISSING} end
if is_final(f[1]) then return {START_FINAL} end
-- Only the worker holding the entry may start the task: one that claimed it, was taken for dead
-- and had it taken over, must not start it after the new holder did (and fence that one out).
local held = redis.pcall('XPENDING', KEYS[3], WORKER_GROUP, ARGV[8], ARGV[8], 1)
if type(held) ~= 'table' or held.err or not held[1] or held[1][2] ~= ARGV[3] then
  return {START_NOT_HELD}
end
if tonumber(f[2]) <= now then
  finish(KEYS[1], ARGV[7], KEYS[2], KEYS[3], STATE_ERROR, ERROR_TIMEOUT, ARGV[5], ARGV[4])
  return {START_TIMEOUT}
end
local attempt = tonumber(f[8]) + 1
local counted = attempt - (tonumber(f[11]) or 0)
if counted > tonumber(ARGV[2]) then
  finish(KEYS[1], ARGV[7], KEYS[2], KEYS[3], STATE_ERROR, ERROR_DEAD_LETTER, ARGV[6], ARGV[4])
  return {START_DEAD}
end
local started = f[6] or ARGV[1]
redis.call('HSET', KEYS[1], 'attempt', attempt, 'state', STATE_RUNNING, 'worker', ARGV[3],
  'started_ms', started, 'attempt_ms', ARGV[1])
return {START_RUN, attempt, f[3], f[4], f[5], started, f[7] or '', f[9] or '', f[10] or '',
  counted}
