"""Lua scripts that change a task's state atomically (docs/protocol.md, part 3).

Every state change of a task is one script, so that two writers (an API replica enforcing a
deadline, a worker that lost its lease, a worker that took the task over) can never interleave
half-done updates. A worker's writes carry the attempt number it was given when it started the
task: a fencing token, so a worker whose lease ran out cannot write into an answer that another
worker now owns.

Task states: queued -> running -> done | error. `error` carries a code in the hash and in the
terminal result entry.

Every script that can end a task records the outcome in the stats sorted set (for /stats), so
each task is counted exactly once, whoever ends it. By convention those scripts take the stats
key as their last KEYS entry and the stats window (ms) as their last ARGV entry.
"""

from __future__ import annotations

# Shared helpers, prepended to every script that ends a task.
_PRELUDE = """
local STATS_KEY = KEYS[#KEYS]
local STATS_WINDOW_MS = tonumber(ARGV[#ARGV])
local STATS_MAX = 50000

local function record(task, state, code, data)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local f = redis.call('HMGET', task, 'created_ms', 'started_ms', 'first_token_ms', 'worker',
    'context')
  local rec
  if state == 'done' then
    local d = cjson.decode(data)
    rec = {queue_ms = d.queue_ms, ttft_ms = d.ttft_ms, total_ms = d.total_ms,
      batch_size = d.batch_size, worker = d.worker}
  else
    local created = tonumber(f[1]) or now
    rec = {queue_ms = f[2] and (tonumber(f[2]) - created) or cjson.null,
      ttft_ms = f[3] and (tonumber(f[3]) - created) or cjson.null,
      total_ms = now - created, batch_size = cjson.null, worker = f[4] or cjson.null}
  end
  rec.task_id = string.match(task, ':task:(.+)$')
  rec.at_ms = now
  rec.outcome = state
  rec.code = code
  rec.preview = string.sub(f[5] or '', 1, 120)
  redis.call('ZADD', STATS_KEY, now, cjson.encode(rec))
  redis.call('ZREMRANGEBYSCORE', STATS_KEY, '-inf', now - STATS_WINDOW_MS)
  redis.call('ZREMRANGEBYRANK', STATS_KEY, 0, -STATS_MAX - 1)
end

local function finish(task, result, tasks, state, code, data, ttl)
  record(task, state, code, data)
  redis.call('HSET', task, 'state', state, 'code', code)
  redis.call('XADD', result, '1-0', 'kind', state, 'data', data)
  redis.call('PEXPIRE', result, ttl)
  redis.call('PEXPIRE', task, ttl)
  redis.call('PUBLISH', result,
    '{"id":"1-0","kind":"' .. state .. '","data":' .. data .. '}')
  local entry = redis.call('HGET', task, 'entry')
  if entry then
    redis.pcall('XACK', tasks, 'workers', entry)
    redis.call('XDEL', tasks, entry)
  end
end
local function is_final(state)
  return state == 'done' or state == 'error'
end
"""

# KEYS: tasks stream, task hash. ARGV: task_id, context, created_ms, deadline_ms, max_queue, ttl_ms
# Returns the stream entry id, or false when the queue is full.
SUBMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[5]) then return false end
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('duplicate task id') end
local entry = redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[1])
redis.call('HSET', KEYS[2], 'context', ARGV[2], 'state', 'queued', 'created_ms', ARGV[3],
  'deadline_ms', ARGV[4], 'entry', entry, 'attempt', 0, 'tokens', 0)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return entry
"""

# KEYS: task hash, result stream, tasks stream, dead stream, stats.
# ARGV: now_ms, max_attempts, worker, ttl_ms, timeout_data, dead_data, task_id, stats_window_ms
# Returns {'run', attempt, context, tokens, created_ms, started_ms, first_token_ms}
# or {reason} with reason one of missing, final, timeout, dead.
START = (
    _PRELUDE
    + """
local now = tonumber(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'state', 'deadline_ms', 'context', 'tokens',
  'created_ms', 'started_ms', 'first_token_ms', 'attempt')
if not f[1] then return {'missing'} end
if is_final(f[1]) then return {'final'} end
if tonumber(f[2]) <= now then
  finish(KEYS[1], KEYS[2], KEYS[3], 'error', 'timeout', ARGV[5], ARGV[4])
  return {'timeout'}
end
local attempt = tonumber(f[8]) + 1
if attempt > tonumber(ARGV[2]) then
  finish(KEYS[1], KEYS[2], KEYS[3], 'error', 'dead_letter', ARGV[6], ARGV[4])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, '*', 'task_id', ARGV[7],
    'attempts', attempt - 1, 'worker', ARGV[3], 'at_ms', ARGV[1])
  return {'dead'}
end
local started = f[6] or ARGV[1]
redis.call('HSET', KEYS[1], 'attempt', attempt, 'state', 'running', 'worker', ARGV[3],
  'started_ms', started)
return {'run', attempt, f[3], f[4], f[5], started, f[7] or ''}
"""
)

# KEYS: task hash, result stream. ARGV: attempt, now_ms, first_index, ttl_ms, token...
# Appends the tokens from first_index on, skipping those already written by an earlier attempt.
# Returns the number of tokens now written, or -1 fenced out, -2 not running, -3 missing.
APPEND = """
local f = redis.call('HMGET', KEYS[1], 'attempt', 'state', 'tokens')
if not f[2] then return -3 end
if f[2] ~= 'running' then return -2 end
if f[1] ~= ARGV[1] then return -1 end
local written = tonumber(f[3])
local n = written
local index = tonumber(ARGV[3])
if index > n then
  return redis.error_reply('token gap: index ' .. index .. ' after ' .. n .. ' tokens')
end
for i = 5, #ARGV do
  if index == n then
    local id = '0-' .. (n + 1)
    redis.call('XADD', KEYS[2], id, 'kind', 'token', 'text', ARGV[i])
    redis.call('PUBLISH', KEYS[2], cjson.encode({id = id, kind = 'token', text = ARGV[i]}))
    n = n + 1
  end
  index = index + 1
end
if n > written then
  redis.call('HSET', KEYS[1], 'tokens', n)
  redis.call('HSETNX', KEYS[1], 'first_token_ms', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return n
"""

# KEYS: task hash, result stream, tasks stream, stats.
# ARGV: attempt, state, code, data, ttl_ms, stats_window_ms
# A worker ends its task. Returns 1, or -1 fenced out, -2 already final, -3 missing.
FINISH = (
    _PRELUDE
    + """
local f = redis.call('HMGET', KEYS[1], 'attempt', 'state')
if not f[2] then return -3 end
if is_final(f[2]) then return -2 end
if f[1] ~= ARGV[1] then return -1 end
finish(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
"""
)

# KEYS: task hash, result stream, tasks stream, stats.
# ARGV: states (comma-separated), code, data, ttl_ms, stats_window_ms
# Ends a task with an error if its state is one of the given ones (cancel: queued; deadline:
# queued,running). Returns 1 if it did, else 0.
ABORT = (
    _PRELUDE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or not string.find(',' .. ARGV[1] .. ',', ',' .. state .. ',', 1, true) then
  return 0
end
finish(KEYS[1], KEYS[2], KEYS[3], 'error', ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)

# KEYS: tasks stream. ARGV: group, consumer, entry ids...
# Resets the idle time of the entries this consumer still holds; returns the ids it no longer
# holds (acknowledged, or taken over after its lease ran out).
RENEW = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

# KEYS: tasks stream. ARGV: lease_ms, max entries to inspect.
# Returns {stream length, pending, pending idle for longer than a lease (their worker is gone)}.
DEPTH = """
local length = redis.call('XLEN', KEYS[1])
local summary = redis.pcall('XPENDING', KEYS[1], 'workers')
if type(summary) ~= 'table' or summary.err then return {length, 0, 0} end
local pending = tonumber(summary[1])
local stale = 0
if pending > 0 then
  stale = #redis.call('XPENDING', KEYS[1], 'workers', 'IDLE', ARGV[1], '-', '+', ARGV[2])
end
return {length, pending, stale}
"""

# KEYS: read turn. ARGV: worker. Ends the turn if this worker still holds it.
END_TURN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
