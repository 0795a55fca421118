-- FINISH: a worker ends its attempt's task with done or error (ending.lua prepended).
-- KEYS[1] task hash, KEYS[2] result stream, KEYS[3] tasks stream, KEYS[4] dead-letter stream,
-- KEYS[5] dead-letter index, KEYS[6] stats
-- ARGV[1] attempt, ARGV[2] state, ARGV[3] code, ARGV[4] data (JSON), ARGV[5] ttl_ms,
-- ARGV[6] task_id, ARGV[7] stats_window_ms
-- Returns {WRITE_OK}, or {why} with why 'missing', 'not_running' (already ended), 'fenced', or
-- 'incomplete': a `done` whose tokens are not all in the result stream (its APPEND was refused,
-- e.g. by a full Redis, while this script runs even then: scripts.py).
local f = redis.call('HMGET', KEYS[1], 'attempt', 'state', 'tokens')
if not f[2] then return {WRITE_MISSING} end
if is_final(f[2]) then return {WRITE_NOT_RUNNING} end
if f[1] ~= ARGV[1] then return {WRITE_FENCED} end
if ARGV[2] == STATE_DONE and (cjson.decode(ARGV[4]).tokens or 0) > tonumber(f[3]) then
  return {WRITE_INCOMPLETE}
end
finish(KEYS[1], ARGV[6], KEYS[2], KEYS[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return {WRITE_OK}
