-- Shared by every script that can end a task (start, finish, abort); scripts.py prepends it.
-- By convention those scripts take the dead-letter stream, the dead-letter index and the stats
-- sorted set as their last three KEYS entries, and the stats window (ms) as their last ARGV entry.
local DEAD_LOG_KEY = KEYS[#KEYS - 2]
local DEAD_KEY = KEYS[#KEYS - 1]
local STATS_KEY = KEYS[#KEYS]
local STATS_WINDOW_MS = tonumber(ARGV[#ARGV])

local function time_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Record a task's outcome in the stats sorted set, so /stats counts every run of a task exactly
-- once, whoever ends it.
local function record(task, task_id, state, code, data)
  local now = time_ms()
  local f = redis.call('HMGET', task, 'created_ms', 'started_ms', 'first_token_ms', 'worker')
  local rec
  if state == STATE_DONE then
    local d = cjson.decode(data)
    rec = {queue_ms = d.queue_ms, ttft_ms = d.ttft_ms, total_ms = d.total_ms,
      batch_size = d.batch_size, worker = d.worker}
  else
    local created = tonumber(f[1]) or now
    rec = {queue_ms = f[2] and (tonumber(f[2]) - created) or cjson.null,
      ttft_ms = f[3] and (tonumber(f[3]) - created) or cjson.null,
      total_ms = now - created, batch_size = cjson.null, worker = f[4] or cjson.null}
  end
  rec.task_id = task_id
  rec.at_ms = now
  rec.outcome = state
  rec.code = code
  redis.call('ZADD', STATS_KEY, now, cjson.encode(rec))
  redis.call('ZREMRANGEBYSCORE', STATS_KEY, '-inf', now - STATS_WINDOW_MS)
  redis.call('ZREMRANGEBYRANK', STATS_KEY, 0, -STATS_MAX_RECORDS - 1)
end

-- Index a dead letter by time, and log it in the dead-letter stream (what the operator turns into
-- Kubernetes Events). The index is trimmed to the result TTL (older ones have expired) and to the
-- newest DEAD_LETTER_MAXLEN; one trimmed by count loses its context, so dead letters hold at most
-- that many contexts however fast poison contexts come.
local function dead_letter(task, task_id, code, ttl)
  local now = time_ms()
  -- Attempts as max_attempts counts them: hand-backs on an orderly stop (HAND_BACK) are none.
  local f = redis.call('HMGET', task, 'attempt', 'worker', 'handed_back')
  local attempts = (tonumber(f[1]) or 0) - (tonumber(f[3]) or 0)
  redis.call('XADD', DEAD_LOG_KEY, 'MAXLEN', '~', DEAD_LETTER_MAXLEN, '*', 'task_id', task_id,
    'attempts', attempts, 'worker', f[2] or '', 'code', code, 'at_ms', now)
  -- Scored in ms to the microsecond, and after the newest: dead letters of one millisecond keep
  -- their order (ties in a sorted set go by member, here a random task id).
  local t = redis.call('TIME')
  local score = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local newest = redis.call('ZRANGE', DEAD_KEY, -1, -1, 'WITHSCORES')
  if newest[2] and tonumber(newest[2]) >= score then score = tonumber(newest[2]) + 0.001 end
  redis.call('ZADD', DEAD_KEY, string.format('%.3f', score), task_id)
  redis.call('ZREMRANGEBYSCORE', DEAD_KEY, '-inf', now - tonumber(ttl))
  local over = redis.call('ZRANGE', DEAD_KEY, 0, -DEAD_LETTER_MAXLEN - 1)
  if #over > 0 then
    local task_prefix = string.sub(task, 1, #task - #task_id)
    for _, id in ipairs(over) do redis.call('HDEL', task_prefix .. id, 'context') end
    redis.call('ZREMRANGEBYRANK', DEAD_KEY, 0, -DEAD_LETTER_MAXLEN - 1)
  end
  redis.call('PEXPIRE', DEAD_KEY, ttl)
end

-- End a task: record it, write and announce its one terminal entry, and remove its queue entry.
-- Its context is dropped (up to LLMB_MAX_CONTEXT_BYTES that nothing reads again; the preview
-- stays for /stats), and a task that ended in error before its first token (cancelled, expired,
-- failed at once) is kept for UNANSWERED_TTL_MS at most. A dead letter (DEAD_LETTER_CODES) is
-- the exception: it keeps its context and stays for the whole TTL, so that it can be requeued.
local function finish(task, task_id, result, tasks, state, code, data, ttl)
  record(task, task_id, state, code, data)
  local dead = state == STATE_ERROR and DEAD_LETTER_CODES[code]
  if not dead then redis.call('HDEL', task, 'context') end
  redis.call('HSET', task, 'state', state, 'code', code)
  if state == STATE_ERROR and not dead
      and tonumber(redis.call('HGET', task, 'tokens') or '0') == 0 then
    ttl = math.min(tonumber(ttl), UNANSWERED_TTL_MS)
  end
  redis.call('XADD', result, TERMINAL_ENTRY_ID, 'kind', state, 'data', data)
  redis.call('PEXPIRE', result, ttl)
  redis.call('PEXPIRE', task, ttl)
  redis.call('PUBLISH', result,
    '{"id":"' .. TERMINAL_ENTRY_ID .. '","kind":"' .. state .. '","data":' .. data .. '}')
  local entry = redis.call('HGET', task, 'entry')
  if entry then
    redis.pcall('XACK', tasks, WORKER_GROUP, entry)
    redis.call('XDEL', tasks, entry)
  end
  if dead then dead_letter(task, task_id, code, ttl) end
end

local function is_final(state)
  return state == STATE_DONE or state == STATE_ERROR
end
